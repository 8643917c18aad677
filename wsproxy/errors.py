"""wsproxy's exception tree.

    WsProxyError
    +-- ConfigError            one problem in site.conf: key path + what was expected
    +-- ConfigErrors           every ConfigError found in one file (``check`` lists them all)
    +-- ProtocolError          (sans-I/O) the peer broke a protocol rule
    |   +-- HttpError          before the upgrade: carries the HTTP status to answer
    |   +-- HandshakeError     a bad WebSocket handshake: status + extra response headers
    |   +-- FrameError         after the upgrade: carries the Close code to send
    +-- UpstreamError          a member failed: carries the status (502/503/504) to answer

Errors carry the answer to give (h11's ``error_status_hint``, wsproto's close code), so the
I/O shell maps them to the client in one place.
"""

from __future__ import annotations


class WsProxyError(Exception):
    """Base of every error wsproxy raises on purpose."""


class ConfigError(WsProxyError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ConfigErrors(WsProxyError):
    def __init__(self, errors: list[ConfigError], source: str = "<config>") -> None:
        self.errors = list(errors)
        self.source = source
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{lines}")


class ProtocolError(WsProxyError):
    """The peer broke a protocol rule."""


class HttpError(ProtocolError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class HandshakeError(HttpError):
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, reason)
        self.headers = headers


class FrameError(ProtocolError):
    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(f"{close_code}: {reason}")
        self.close_code = close_code
        self.reason = reason


class UpstreamError(WsProxyError):
    """No member could take the request: ``status`` is the answer (502/503/504);
    ``retry_after`` (seconds) goes into a 503's Retry-After header."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
