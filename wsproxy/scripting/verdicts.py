"""Verdicts: what a handler returns to decide the fate of the event.

Verdicts are return values, not callbacks (plugin-api.md §2.2): a Lua handler returns
``"close", 1008, "policy"``, a Python one ``close(1008, "policy")``; both become the same
``Verdict``. The constructors validate their arguments (a Close code a peer would reject, a
header with CR/LF), so a bad verdict fails inside the plugin, with its traceback, and the
chain checks per event which kinds are allowed (``events.VERDICTS``).

Terminal kinds stop the chain for the event: drop, close, reject, respond, redirect,
reselect. ``replace`` is not terminal: later handlers see the new payload (Kong's
"handlers that execute after this ... see the updated version of the frame").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = ["Verdict", "DROP", "REJECT", "drop", "replace", "close", "respond", "redirect", "reselect",
           "reject", "check_close", "check_header", "TERMINAL"]

TERMINAL = frozenset({"drop", "close", "reject", "respond", "redirect", "reselect", "abort"})

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class Verdict:
    """One handler decision. ``kind`` says which of the other fields are meaningful:

    drop; replace(data); close(code, reason); respond(status, body, headers);
    redirect(url, status); reselect(pool or None); reject; and "abort", which only the
    chain produces (a plugin error under ``on_error = "abort"``).
    """

    kind: str
    data: bytes | None = None
    code: int | None = None
    reason: str = ""
    status: int | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    pool: str | None = None


DROP = Verdict("drop")
REJECT = Verdict("reject")


def _as_bytes(data, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, got {type(data).__name__}")


def check_close(code, reason) -> tuple[int, str]:
    """A Close code and reason that may be sent (RFC 6455 §7.4; 1012-1014 are IANA-registered)."""
    if isinstance(code, float) and code.is_integer():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"close code must be an integer, got {type(code).__name__}")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)")
    if isinstance(reason, bytes):
        try:
            reason = reason.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("close reason must be valid UTF-8") from None
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be a string, got {type(reason).__name__}")
    if len(reason.encode("utf-8")) > 123:
        raise ValueError("close reason is longer than 123 bytes")
    return code, reason


def check_header(name, value) -> tuple[str, str]:
    """A header field a plugin may write: a token name, a value without CR, LF or NUL."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"header {name} value must be a string, got {type(value).__name__}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"header {name} value contains CR, LF or NUL")
    return name, value


def _status(status) -> int:
    if isinstance(status, float) and status.is_integer():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"status must be an integer, got {type(status).__name__}")
    return status


def drop() -> Verdict:
    """Drop the frame or message: it is not forwarded."""
    return DROP


def replace(data: bytes | str) -> Verdict:
    """Forward ``data`` instead of the payload (str is encoded as UTF-8)."""
    return Verdict("replace", data=_as_bytes(data, "replace data"))


def close(code: int = 1000, reason: str = "") -> Verdict:
    """Close the WebSocket: Close ``code``/``reason`` to both peers."""
    code, reason = check_close(code, reason)
    return Verdict("close", code=code, reason=reason)


def respond(status: int, body: bytes | str = b"", headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> Verdict:
    """Answer the client with this response instead of proxying (no member is contacted)."""
    status = _status(status)
    if not 200 <= status <= 599:
        raise ValueError(f"respond status must be 200-599, got {status}")
    pairs: list[tuple[str, str]] = []
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            pairs.append(check_header(name, value))
    return Verdict("respond", status=status, body=_as_bytes(body, "respond body"), headers=tuple(pairs))


def redirect(url: str, status: int = 302) -> Verdict:
    """Answer with a redirect to ``url`` (301, 302, 303, 307 or 308)."""
    status = _status(status)
    if status not in _REDIRECT_STATUSES:
        raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, got {status}")
    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    if not isinstance(url, str) or not url or re.search(r"[\x00-\x20\x7f]", url):
        raise ValueError(f"redirect url must be a non-empty string without spaces or controls, got {url!r}")
    return Verdict("redirect", url=url, status=status)


def reselect(pool: str | None = None) -> Verdict:
    """Choose again: another member of the same pool, or a member of ``pool``."""
    if isinstance(pool, bytes):
        pool = pool.decode("utf-8", "replace")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise ValueError(f"reselect pool must be a pool name, got {pool!r}")
    return Verdict("reselect", pool=pool)


def reject() -> Verdict:
    """Close the client connection without any answer (iRules ``reject``)."""
    return REJECT
