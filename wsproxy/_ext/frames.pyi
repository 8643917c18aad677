"""Compiled twin of wsproxy.protocol.frames.FrameTracker (built from ext/frames.pyx)."""

from typing import TypeAlias, final

_Bytes: TypeAlias = bytes | bytearray | memoryview

__all__ = ["FrameTracker"]

@final
class FrameTracker:
    """Follow the frames of ONE direction without keeping payloads (HEADERS relay mode).

    Raises ``wsproxy.errors.FrameError(close_code, reason)`` on a violation; the tracker is then
    dead and every later ``feed`` raises the same error.
    """

    def __init__(self, masked: bool, rsv_allowed: int = 0, max_frame_size: int = 0) -> None: ...
    def feed(self, data: _Bytes) -> None:
        """Advance over ``data`` (any chunking); raise ``FrameError`` on a violation."""
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
