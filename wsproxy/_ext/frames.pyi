"""Compiled twin of wsproxy.protocol.frames (built from ext/frames.pyx)."""

from collections.abc import Iterable
from typing import TypeAlias, final

_Bytes: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "Frame",
    "FrameReader",
    "FrameTracker",
    "Message",
    "MessageAssembler",
    "build_close",
    "build_frame",
]

@final
class FrameTracker:
    """Follow the frames of ONE direction without keeping payloads (HEADERS relay mode).

    Raises ``wsproxy.errors.FrameError(close_code, reason)`` on a violation; the tracker is then
    dead and every later ``feed`` raises the same error.
    """

    def __init__(self, masked: bool, rsv_allowed: int = 0, max_frame_size: int = 0,
                 max_message_size: int = 0, validate_utf8: bool = False) -> None: ...
    def feed(self, data: _Bytes) -> None:
        """Advance over ``data`` (any chunking); raise ``FrameError`` on a violation."""
    def feed_to_frame(self, data: _Bytes, pong_only: bool = True) -> int:
        """Like ``feed``, but stop before a frame (a Pong only, with ``pong_only``) that begins
        in ``data``; return the bytes consumed (``len(data)`` if none begins)."""
    @property
    def frames(self) -> int:
        """Complete frames seen."""
    @property
    def messages(self) -> int:
        """Complete data messages seen (a FIN text, binary or continuation frame)."""
    @property
    def at_boundary(self) -> bool:
        """True when no frame is partly seen (and no error was raised)."""
    @property
    def close_code(self) -> int:
        """Code of the first complete Close frame: -1 before one, 1005 if it had no payload."""
    @property
    def bytes_in(self) -> int:
        """Total bytes passed to ``feed``."""
    @property
    def frame_start(self) -> int:
        """Stream offset where the frame being read (or the one that failed) began."""

@final
class Frame:
    """One frame as read by ``FrameReader``: ``payload`` unmasked, ``raw`` its wire bytes
    (header + still-masked payload; b"" for a frame built by code). Equality ignores ``raw``."""

    fin: bool
    opcode: int
    payload: bytes
    rsv: int
    raw: bytes
    def __init__(self, fin: bool, opcode: int, payload: bytes, rsv: int = 0, raw: bytes = b"") -> None: ...

@final
class FrameReader:
    """Parse whole frames with unmasked payloads and their wire bytes (inspect relay mode).

    ``masked`` None accepts both. ``max_size`` > 0 caps each frame's payload (1009), checked as
    soon as the length is known. Raises ``FrameError`` like ``FrameTracker``.
    """

    def __init__(
        self, masked: bool | None = None, max_size: int = 64 * 1024 * 1024, rsv_allowed: int = 0
    ) -> None: ...
    def feed(self, data: _Bytes) -> list[Frame]:
        """Return the frames completed by ``data``; raise ``FrameError`` on a violation."""
    @property
    def frames(self) -> int:
        """Complete frames seen."""
    @property
    def messages(self) -> int:
        """Complete data messages seen (a FIN text, binary or continuation frame)."""
    @property
    def at_boundary(self) -> bool:
        """True when no frame is partly seen (and no error was raised)."""
    @property
    def close_code(self) -> int:
        """Code of the first complete Close frame: -1 before one, 1005 if it had no payload."""
    @property
    def bytes_in(self) -> int:
        """Total bytes passed to ``feed``."""
    @property
    def frame_start(self) -> int:
        """Stream offset where the frame being read (or the one that failed) began."""
    @property
    def completed(self) -> list[Frame]:
        """The last ``feed``'s frames; after a ``FrameError``, those before the violation."""

@final
class Message:
    """One whole data message: ``rsv & 0x40`` = compressed (inflate first); ``raw`` joins its
    frames' wire bytes (b"" if one had none); ``frames`` counts them. Equality ignores both."""

    opcode: int
    payload: bytes
    rsv: int
    raw: bytes
    frames: int
    def __init__(
        self, opcode: int, payload: bytes, rsv: int = 0, raw: bytes = b"", frames: int = 1
    ) -> None: ...

@final
class MessageAssembler:
    """Join data frames into ``Message`` values; control frames pass through in order.

    ``max_size`` > 0 caps a message's payload (1009); ``validate_utf8`` checks uncompressed text
    messages fragment by fragment (1007); continuation order is checked (1002).
    """

    def __init__(self, max_size: int = 64 * 1024 * 1024, validate_utf8: bool = True) -> None: ...
    def feed(self, frames: Iterable[Frame]) -> list[Frame | Message]:
        """Return the messages and control frames completed by ``frames``, in order."""
    @property
    def messages(self) -> int:
        """Whole messages returned so far."""
    @property
    def in_message(self) -> bool:
        """True while a fragmented message waits for its last frame."""
    @property
    def completed(self) -> list[Frame | Message]:
        """The last ``feed``'s result; after a ``FrameError``, what came before the violation."""

def build_frame(opcode: int, payload: _Bytes, *, fin: bool = True, mask: bool, rsv: int = 0) -> bytes:
    """Serialize one frame; with ``mask`` the key comes from ``os.urandom(4)`` (RFC 6455 §10.3)."""

def build_close(code: int, reason: str = "", *, mask: bool) -> bytes:
    """Serialize a Close frame; code 1005 ("no status") gives an empty payload."""
