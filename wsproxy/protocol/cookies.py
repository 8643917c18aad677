"""Cookie headers: read one cookie from a request, drop one, and write a Set-Cookie.

Only what sticky sessions and ``hash_key = "cookie:NAME"`` need (RFC 6265 §4.2.1 and §5.4):
a request's ``Cookie`` headers are ``name=value`` pairs joined by ``"; "``, and a name may
appear more than once, in which case the first one counts, as browsers send the most
specific cookie first.
"""

from __future__ import annotations

from typing import Iterator

Headers = list[tuple[str, str]]


def _pairs(value: str) -> Iterator[tuple[str, str]]:
    for part in value.split(";"):
        name, eq, cookie = part.strip().partition("=")
        if eq:
            yield name.strip(), cookie.strip().strip('"')


def cookie_value(headers: Headers, name: str) -> str | None:
    """The value of cookie ``name`` in the request's Cookie headers, or None."""
    for key, value in headers:
        if key.lower() == "cookie":
            for cookie_name, cookie in _pairs(value):
                if cookie_name == name:
                    return cookie
    return None


def without_cookie(headers: Headers, name: str) -> Headers:
    """``headers`` with cookie ``name`` removed (a Cookie header left empty is dropped).

    Headers that never mention the name are kept byte for byte.
    """
    out: Headers = []
    for key, value in headers:
        if key.lower() != "cookie" or name not in value:
            out.append((key, value))
            continue
        kept = [part.strip() for part in value.split(";")
                if part.strip() and part.partition("=")[0].strip() != name]
        if kept:
            out.append((key, "; ".join(kept)))
    return out


def set_cookie(name: str, value: str, *, secure: bool, max_age: float | None) -> tuple[str, str]:
    """A Set-Cookie header: ``Path=/; HttpOnly; SameSite=Lax``, ``Secure`` on TLS listeners."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={int(max_age)}")
    return ("Set-Cookie", "; ".join(parts))
