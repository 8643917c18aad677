"""WebSocket frames (RFC 6455 §5): a header-only tracker, a full reader, and builders.

- ``FrameTracker`` is the proxy's HEADERS relay mode for one direction: it follows frame
  boundaries in a byte stream of any chunking, validates every header, skips payloads by
  counting, and reads only the (<= 125 byte) Close payload to learn the close code. Its compiled
  twin is ``ext/frames.pyx``; ``wsproxy._speedups`` picks one.
- ``FrameReader`` shares the tracker's state machine but keeps every payload and returns
  ``Frame`` values. It is for the demo backend and tests, not the hot path.
- ``build_frame`` / ``build_close`` serialize frames. They do not enforce protocol rules, so
  tests can build invalid frames with them.

Every violation raises ``FrameError(close_code, reason)``; the parser is then dead and each
later ``feed`` raises the same error again. Both tracker implementations are checked against
``tests/vectors/frames_*.json`` and against each other (``tests/property``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

from wsproxy.errors import FrameError
from wsproxy.protocol.mask import apply_mask

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "Frame",
    "FrameTracker",
    "FrameReader",
    "build_frame",
    "build_close",
    "parse_close_payload",
    "valid_close_code",
]

OP_CONT = 0
OP_TEXT = 1
OP_BINARY = 2
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10

RSV_BITS = 0x70  # RSV1 0x40 (permessage-deflate), RSV2 0x20, RSV3 0x10
MAX_CONTROL_PAYLOAD = 125

# Parser states, plain ints so the C twin mirrors them one to one.
_HEAD0 = 0  # next byte is FIN/RSV/opcode: at a frame boundary
_HEAD1 = 1  # next byte is MASK/7-bit length
_LENGTH = 2  # inside a 16- or 64-bit extended length
_MASK_KEY = 3  # inside the 4-byte mask key
_PAYLOAD = 4  # inside the payload
_DEAD = 5  # a violation was raised; every later feed raises it again


def valid_close_code(code: int) -> bool:
    """True if ``code`` may appear in a Close frame (RFC 6455 §7.4 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Split an unmasked Close payload into (code, reason); (1005, "") when it is empty."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not valid_close_code(code):
        raise FrameError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "invalid UTF-8 in the close reason") from None
    return code, reason


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as read by ``FrameReader``; ``payload`` is already unmasked."""

    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0


class _FrameParser:
    """The state machine shared by FrameTracker and FrameReader.

    Headers are read byte by byte (a header may split anywhere, even inside the extended length
    or the mask key) and each rule is checked as soon as the bytes it needs have arrived.
    Payload is skipped by counting unless ``_collect`` is set: always for a Close frame, for
    every frame in the reader.
    """

    __slots__ = (
        "_masked", "_rsv_allowed", "_max_frame_size", "_state",
        "_fin", "_opcode", "_rsv", "_has_mask", "_need", "_length", "_remaining",
        "_collect", "_key", "_payload", "_fragmented",
        "_frames", "_messages", "_close_code", "_bytes_in", "_frame_start", "_error", "_out",
    )  # fmt: skip

    _collect_all = False  # class constant: the reader keeps every payload

    def __init__(self, masked: bool | None, rsv_allowed: int, max_frame_size: int) -> None:
        if rsv_allowed & ~RSV_BITS:
            raise ValueError(f"rsv_allowed must be a subset of 0x70, not {rsv_allowed:#x}")
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0 (0 = no limit)")
        self._masked = masked  # None (reader only): either is accepted
        self._rsv_allowed = rsv_allowed
        self._max_frame_size = max_frame_size
        self._state = _HEAD0
        # the frame being read
        self._fin = False
        self._opcode = 0
        self._rsv = 0
        self._has_mask = False
        self._need = 0  # bytes left in the extended length or the mask key
        self._length = 0  # payload length, possibly still being read
        self._remaining = 0  # payload bytes not seen yet
        self._collect = False
        self._key = b""
        self._payload = bytearray()
        # the stream
        self._fragmented = False  # a text/binary message waits for its FIN frame
        self._frames = 0
        self._messages = 0
        self._close_code = -1
        self._bytes_in = 0
        self._frame_start = 0
        self._error: tuple[int, str] | None = None
        self._out: list[Frame] = []

    # Read-only results (the C twin exposes the same as properties).
    @property
    def frames(self) -> int:
        """Complete frames seen."""
        return self._frames

    @property
    def messages(self) -> int:
        """Complete data messages seen (a FIN text, binary or continuation frame)."""
        return self._messages

    @property
    def at_boundary(self) -> bool:
        """True when no frame is partly seen (and no error was raised)."""
        return self._state == _HEAD0

    @property
    def close_code(self) -> int:
        """Code of the first complete Close frame: -1 before one, 1005 if it had no payload."""
        return self._close_code

    @property
    def bytes_in(self) -> int:
        """Total bytes passed to ``feed``."""
        return self._bytes_in

    @property
    def frame_start(self) -> int:
        """Stream offset where the frame being read began (``bytes_in`` at a boundary).

        After a FrameError it is where the offending frame began, so a relay can still
        forward the valid frames that came before it in the same chunk.
        """
        if self._state == _HEAD0:
            return self._bytes_in
        return self._frame_start

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, (bytes, bytearray)):
            self._consume(data)
        else:
            # Release the views even when we raise, so the caller's buffer can be resized.
            with memoryview(data) as outer, outer.cast("B") as view:
                self._consume(view)

    def _consume(self, data: bytes | bytearray | memoryview) -> None:
        end = len(data)
        self._bytes_in += end
        if self._error is not None:
            raise FrameError(*self._error)
        pos = 0
        while pos < end:
            state = self._state
            if state == _PAYLOAD:
                take = min(self._remaining, end - pos)
                if self._collect:
                    self._payload += data[pos : pos + take]
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_frame()
            elif state == _HEAD0:
                self._frame_start = self._bytes_in - end + pos
                self._first_byte(data[pos])
                pos += 1
            elif state == _HEAD1:
                self._second_byte(data[pos])
                pos += 1
            elif state == _LENGTH:
                take = min(self._need, end - pos)
                chunk = int.from_bytes(data[pos : pos + take], "big")
                self._length = (self._length << (8 * take)) | chunk
                pos += take
                self._need -= take
                if not self._need:
                    self._length_done()
            else:  # _MASK_KEY
                take = min(self._need, end - pos)
                if self._collect:
                    self._key += data[pos : pos + take]
                pos += take
                self._need -= take
                if not self._need:
                    self._header_done()

    def _first_byte(self, byte: int) -> None:
        opcode = byte & 0x0F
        rsv = byte & RSV_BITS
        fin = byte >= 0x80
        if 3 <= opcode <= 7 or opcode >= 11:
            self._fail(1002, f"reserved opcode {opcode}")
        is_control = opcode >= OP_CLOSE
        if rsv:
            if rsv & ~self._rsv_allowed:
                self._fail(1002, "RSV bits not negotiated")
            # permessage-deflate (RFC 7692 §6): RSV1 only on the first frame of a message
            if is_control:
                self._fail(1002, "RSV bit on a control frame")
            if opcode == OP_CONT:
                self._fail(1002, "RSV bit on a continuation frame")
        if is_control:
            if not fin:
                self._fail(1002, "fragmented control frame")
        elif opcode == OP_CONT:
            if not self._fragmented:
                self._fail(1002, "continuation frame with no message to continue")
        elif self._fragmented:
            self._fail(1002, "new data frame inside a fragmented message")
        self._fin = fin
        self._opcode = opcode
        self._rsv = rsv
        self._collect = self._collect_all or opcode == OP_CLOSE
        self._state = _HEAD1

    def _second_byte(self, byte: int) -> None:
        has_mask = byte >= 0x80
        if self._masked is not None and has_mask != self._masked:
            self._fail(1002, "frame not masked" if self._masked else "frame masked")
        length = byte & 0x7F
        if self._opcode >= OP_CLOSE:
            if length > MAX_CONTROL_PAYLOAD:
                self._fail(1002, "control frame payload over 125 bytes")
            if length == 1 and self._opcode == OP_CLOSE:
                self._fail(1002, "close frame with a 1-byte payload")
        self._has_mask = has_mask
        if length < 126:
            self._length = length
            self._length_done()
        else:  # 126: 16-bit length follows, 127: 64-bit
            self._length = 0
            self._need = 2 if length == 126 else 8
            self._state = _LENGTH

    def _length_done(self) -> None:
        length = self._length
        if length >> 63:
            self._fail(1002, "64-bit length with the top bit set")
        if self._max_frame_size and length > self._max_frame_size:
            self._fail(1009, f"frame of {length} bytes over the {self._max_frame_size} byte limit")
        self._remaining = length
        if self._has_mask:
            self._need = 4
            self._key = b""
            self._state = _MASK_KEY
        else:
            self._header_done()

    def _header_done(self) -> None:
        if self._collect:
            self._payload = bytearray()
        if self._remaining:
            self._state = _PAYLOAD
        else:
            self._end_frame()

    def _end_frame(self) -> None:
        opcode = self._opcode
        payload = b""
        if self._collect:
            payload = bytes(self._payload)
            if self._has_mask:
                payload = apply_mask(payload, self._key)
            if opcode == OP_CLOSE:
                try:
                    code, _ = parse_close_payload(payload)
                except FrameError as exc:
                    self._fail(exc.close_code, exc.reason)
                if self._close_code < 0:  # the first Close is the one that counts
                    self._close_code = code
        if opcode < OP_CLOSE:
            self._fragmented = not self._fin
            if self._fin:
                self._messages += 1
        self._frames += 1
        self._state = _HEAD0
        if self._collect_all:
            self._out.append(Frame(self._fin, opcode, payload, self._rsv))

    def _fail(self, code: int, reason: str) -> NoReturn:
        self._error = (code, reason)
        self._state = _DEAD
        raise FrameError(code, reason)


class FrameTracker(_FrameParser):
    """Follow the frames of ONE direction without keeping payloads (HEADERS relay mode).

    ``masked`` is True for client-to-server traffic (every frame must be masked) and False for
    server-to-client (none may be). ``rsv_allowed`` holds the RSV bits the handshake negotiated
    (0x40 with permessage-deflate). ``max_frame_size`` > 0 caps each frame's payload (1009).
    """

    __slots__ = ()

    def __init__(self, masked: bool, rsv_allowed: int = 0, max_frame_size: int = 0) -> None:
        super().__init__(bool(masked), rsv_allowed, max_frame_size)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Advance over ``data`` (any chunking); raise ``FrameError`` on a violation."""
        self._feed(data)


class FrameReader(_FrameParser):
    """Parse whole frames with unmasked payloads (demo backend, tests).

    ``masked`` None accepts masked and unmasked frames. ``max_size`` > 0 caps each frame's
    payload (1009), checked before any of it is buffered. On a ``FrameError``, frames completed
    earlier in the same ``feed`` call are lost; the connection is to be closed anyway.
    """

    __slots__ = ()

    _collect_all = True

    def __init__(
        self, masked: bool | None = None, max_size: int = 64 * 1024 * 1024, rsv_allowed: int = 0
    ) -> None:
        super().__init__(masked, rsv_allowed, max_size)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Return the frames completed by ``data``; raise ``FrameError`` on a violation."""
        self._out = []
        self._feed(data)
        return self._out


def build_frame(
    opcode: int, payload: bytes | bytearray | memoryview, *, fin: bool = True, mask: bool, rsv: int = 0
) -> bytes:
    """Serialize one frame; with ``mask`` the key comes from ``os.urandom(4)`` (RFC 6455 §10.3)."""
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode must be 0..15, not {opcode}")
    if rsv & ~RSV_BITS:
        raise ValueError(f"rsv must be a subset of 0x70, not {rsv:#x}")
    payload = bytes(payload)
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    if length < 126:
        head.append(mask_bit | length)
    elif length < 1 << 16:
        head.append(mask_bit | 126)
        head += length.to_bytes(2, "big")
    else:
        head.append(mask_bit | 127)
        head += length.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = apply_mask(payload, key)
    return bytes(head) + payload


def build_close(code: int, reason: str = "", *, mask: bool) -> bytes:
    """Serialize a Close frame; code 1005 ("no status") gives an empty payload."""
    if code == 1005:
        if reason:
            raise ValueError("a Close without a code (1005) cannot carry a reason")
        payload = b""
    else:
        payload = code.to_bytes(2, "big") + reason.encode("utf-8")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("close reason too long (the payload is limited to 125 bytes)")
    return build_frame(OP_CLOSE, payload, mask=mask)
