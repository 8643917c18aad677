"""The WebSocket opening handshake (RFC 6455 §4), checked on both legs, and the Origin policy.

- ``validate_client_handshake`` checks a client's upgrade request (§4.2.1) before the proxy
  picks a member, so a bad request costs no upstream connection.
- ``check_server_accept`` checks the member's 101 (§4.1, client side), so a member that does
  not speak WebSocket is caught before the client is told "101".
- ``origin_allowed`` is the defence against cross-site WebSocket hijacking.

Errors are ``HandshakeError(status, reason, headers)``: 400, 426 (with
``Sec-WebSocket-Version: 13``) toward the client, 502 for a member's bad 101.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from urllib.parse import urlsplit

from wsproxy.errors import HandshakeError
from wsproxy.protocol.http1 import RequestHead, ResponseHead

__all__ = [
    "WS_GUID",
    "accept_key",
    "is_websocket_request",
    "validate_client_handshake",
    "check_server_accept",
    "negotiated_rsv",
    "origin_allowed",
]

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUPPORTED_VERSION = "13"
RSV1_PERMESSAGE_DEFLATE = 0x40
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2 step 5.4)."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _tokens(head: RequestHead | ResponseHead, name: str) -> set[str]:
    """The lowercased comma-separated tokens of every ``name`` header."""
    return {t.strip(" \t").lower() for v in head.get_all(name) for t in v.split(",")} - {""}


def is_websocket_request(head: RequestHead) -> bool:
    """True when the client asks to upgrade to WebSocket (an Upgrade token "websocket")."""
    return "websocket" in _tokens(head, "upgrade")


def _single(head: RequestHead | ResponseHead, name: str) -> str | None:
    """The value of a header that must appear at most once; None when absent or repeated."""
    values = head.get_all(name)
    return values[0].strip(" \t") if len(values) == 1 else None


def validate_client_handshake(head: RequestHead) -> None:
    """Check a client's opening handshake (RFC 6455 §4.2.1); raise HandshakeError if bad.

    The version is checked before the key, so an old-protocol client (hybi-00 has no
    Sec-WebSocket-Key) gets the 426 that tells it which version to speak.
    """
    if head.method != "GET":
        raise HandshakeError(400, f"WebSocket handshake must use GET, not {head.method}")
    if head.version != "1.1":
        raise HandshakeError(400, f"WebSocket handshake needs HTTP/1.1, not HTTP/{head.version}")
    if not (head.get("host") or "").strip():
        raise HandshakeError(400, "WebSocket handshake without a Host header")
    if not is_websocket_request(head):
        raise HandshakeError(400, "Upgrade header does not contain websocket")
    if "upgrade" not in _tokens(head, "connection"):
        raise HandshakeError(400, "Connection header does not contain upgrade")
    if _single(head, "sec-websocket-version") != SUPPORTED_VERSION:
        raise HandshakeError(
            426,
            "unsupported or missing Sec-WebSocket-Version",
            headers=(("Sec-WebSocket-Version", SUPPORTED_VERSION),),
        )
    key = _single(head, "sec-websocket-key")
    if key is None or not _is_valid_key(key):
        raise HandshakeError(400, "Sec-WebSocket-Key must be one base64 value of 16 bytes")


def _is_valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


def check_server_accept(request_key: str, response_head: ResponseHead) -> None:
    """Check a member's answer to the handshake we forwarded; HandshakeError(502) if bad."""
    if response_head.status != 101:
        raise HandshakeError(502, f"member answered the upgrade with {response_head.status}, not 101")
    if "websocket" not in _tokens(response_head, "upgrade"):
        raise HandshakeError(502, "member's 101 lacks Upgrade: websocket")
    if "upgrade" not in _tokens(response_head, "connection"):
        raise HandshakeError(502, "member's 101 lacks Connection: upgrade")
    if _single(response_head, "sec-websocket-accept") != accept_key(request_key):
        raise HandshakeError(502, "member's 101 has a wrong or missing Sec-WebSocket-Accept")


def negotiated_rsv(response_head: ResponseHead) -> int:
    """RSV bits the accepted extensions may set on frames: 0x40 (RSV1) for permessage-deflate."""
    for value in response_head.get_all("sec-websocket-extensions"):
        for extension in value.split(","):
            if extension.split(";")[0].strip(" \t").lower() == "permessage-deflate":
                return RSV1_PERMESSAGE_DEFLATE
    return 0


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized origin, lowercased, default port filled in; None
    when it is not a plain scheme://host[:port] (a path, user info, "null", garbage)."""
    try:
        parts = urlsplit(origin.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host.lower(), port


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """May a handshake with this Origin header proceed?

    - ``allowed`` empty: every origin is allowed (no policy configured).
    - An entry ``https://app.example.com[:port]`` matches that origin exactly; scheme and host
      compare case-insensitively and a default port may be written or left out.
    - An entry ``https://*.example.com[:port]`` matches one or more labels before
      ``.example.com`` (``a.example.com``, ``a.b.example.com``), never ``example.com`` itself.
    - Origin ``null`` (sandboxed frames, file:) matches only an entry that is exactly ``null``.
    - **No Origin header is allowed** even when a policy is set. Cross-site WebSocket hijacking
      needs a victim's browser, and browsers always send Origin on WebSocket handshakes; a
      client that omits it is not a browser and could send any Origin it likes, so refusing it
      protects nothing and breaks command-line and server-to-server clients. Authenticate those.
    """
    if not allowed or origin is None:
        return True
    if origin.strip().lower() == "null":
        return any(entry.strip().lower() == "null" for entry in allowed)
    parsed = _parse_origin(origin)
    if parsed is None:
        return False
    scheme, host, port = parsed
    for entry in allowed:
        entry = entry.strip().rstrip("/")  # a trailing slash in config is a harmless typo
        wildcard = "://*." in entry
        wanted = _parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if wanted is None or wanted[0] != scheme or wanted[2] != port:
            continue
        if not wildcard:
            if wanted[1] == host:
                return True
        elif host.endswith("." + wanted[1]):
            labels = host[: -len(wanted[1]) - 1].split(".")
            if all(labels):
                return True
    return False
