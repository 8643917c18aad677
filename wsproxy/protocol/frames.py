"""WebSocket frames (RFC 6455 §5): a header-only tracker, a full reader, messages, builders.

- ``FrameTracker`` is the proxy's HEADERS relay mode for one direction: it follows frame
  boundaries in a byte stream of any chunking, validates every header, skips payloads by
  counting, and reads only the (<= 125 byte) Close payload to learn the close code.
- ``FrameReader`` shares the tracker's state machine but returns whole ``Frame`` values with
  unmasked payloads and their original wire bytes (``raw``): the inspect relay mode forwards
  an unchanged frame as ``raw``, and re-serializes only the frames a plugin replaced.
- ``MessageAssembler`` turns frames into whole data ``Message`` values (WS_MESSAGE plugins),
  passing control frames through as they come.
- ``build_frame`` / ``build_close`` serialize frames. They do not enforce protocol rules, so
  tests can build invalid frames with them.

Each of them has a compiled twin in ``ext/frames.pyx``; ``wsproxy._speedups`` picks one.
Every violation raises ``FrameError(close_code, reason)``; the parser is then dead and each
later ``feed`` raises the same error again. Both twins are checked against
``tests/vectors/frames_*.json`` and ``messages.json``, and against each other (``tests/property``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    "Message",
    "MessageAssembler",
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
    """One frame as read by ``FrameReader``; ``payload`` is already unmasked.

    ``raw`` is the frame exactly as it came off the wire (header and still-masked payload), so
    an unchanged frame is forwarded with one ``write(frame.raw)`` and no re-serialization. It is
    empty for a frame built by code. Equality ignores it: two frames with the same content are
    equal whatever their mask keys.
    """

    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0
    raw: bytes = field(default=b"", compare=False, repr=False)


class _FrameParser:
    """The state machine shared by FrameTracker and FrameReader.

    Headers are read byte by byte (a header may split anywhere, even inside the extended length
    or the mask key) and each rule is checked as soon as the bytes it needs have arrived.
    Payload is skipped by counting; only a Close frame's payload is collected (``_collect``), to
    check its code, and, on a tracker with ``validate_utf8``, a text message's payload is looked
    at (``_collect`` too) for its UTF-8. The reader takes its frames' bytes from the chunks fed.
    """

    __slots__ = (
        "_masked", "_rsv_allowed", "_max_frame_size", "_state",
        "_fin", "_opcode", "_rsv", "_has_mask", "_need", "_length", "_head_len", "_remaining",
        "_collect", "_key", "_payload", "_fragmented",
        "_frames", "_messages", "_close_code", "_bytes_in", "_frame_start", "_error", "_out",
        "_max_message_size", "_message_size", "_validate_utf8", "_check_utf8", "_utf8_tail",
    )  # fmt: skip

    _collect_all = False  # class constant: the reader makes a Frame of every frame

    def __init__(self, masked: bool | None, rsv_allowed: int, max_frame_size: int,
                 max_message_size: int = 0, validate_utf8: bool = False) -> None:
        if rsv_allowed & ~RSV_BITS:
            raise ValueError(f"rsv_allowed must be a subset of 0x70, not {rsv_allowed:#x}")
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0 (0 = no limit)")
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0 (0 = no limit)")
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
        self._head_len = 0  # header bytes: 2, + 2 or 8 of extended length, + 4 of mask key
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
        # the data message being read (FrameTracker's max_message_size and validate_utf8)
        self._max_message_size = max_message_size
        self._message_size = 0  # its payload bytes so far (counted with a limit only)
        self._validate_utf8 = bool(validate_utf8)
        self._check_utf8 = False  # it is uncompressed text, and validate_utf8 is on
        self._utf8_tail = b""  # an unfinished character at the end of its payload so far

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
                    self._payload_seen(data[pos : pos + take])
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
        self._collect = opcode == OP_CLOSE
        if self._validate_utf8 and opcode < OP_CLOSE:
            if opcode != OP_CONT:  # a message begins
                self._check_utf8 = opcode == OP_TEXT and not rsv & 0x40  # deflated: not UTF-8 yet
                self._utf8_tail = b""
            self._collect = self._check_utf8
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
            self._head_len = 2
            self._length = length
            self._length_done()
        else:  # 126: 16-bit length follows, 127: 64-bit
            self._length = 0
            self._need = 2 if length == 126 else 8
            self._head_len = 2 + self._need
            self._state = _LENGTH

    def _length_done(self) -> None:
        length = self._length
        if length >> 63:
            self._fail(1002, "64-bit length with the top bit set")
        if self._max_frame_size and length > self._max_frame_size:
            self._fail(1009, f"frame of {length} bytes over the {self._max_frame_size} byte limit")
        if self._max_message_size and self._opcode < OP_CLOSE:  # control frames do not count
            size = length if self._opcode != OP_CONT else self._message_size + length
            if size > self._max_message_size:
                self._fail(1009, f"message of at least {size} bytes over the {self._max_message_size} byte limit")
            self._message_size = size
        self._remaining = length
        if self._has_mask:
            self._head_len += 4
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

    def _payload_seen(self, piece: bytes | bytearray | memoryview) -> None:
        """Payload bytes of a frame with ``_collect``: a Close frame's are kept; a checked
        text frame's are unmasked, if need be, and go through the UTF-8 check (1007)."""
        if self._opcode == OP_CLOSE:
            self._payload += piece
            return
        if self._has_mask:  # the key stream goes on from the payload bytes before this piece
            piece = apply_mask(piece, self._key, self._length - self._remaining)
        tail = _utf8_unfinished_tail(self._utf8_tail + bytes(piece))
        if tail is None:
            self._fail(1007, "invalid UTF-8 in a text message")
        self._utf8_tail = tail

    def _end_frame(self) -> None:
        opcode = self._opcode
        if self._collect and opcode != OP_CLOSE:  # a checked text frame
            if self._fin and self._utf8_tail:  # the message ends inside a character
                self._fail(1007, "invalid UTF-8 in a text message")
        elif self._collect:  # a Close frame
            payload = bytes(self._payload)
            if self._has_mask:
                payload = apply_mask(payload, self._key)
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
            self._out.append(self._take_frame())

    def _take_frame(self) -> Frame:
        """The frame just completed (FrameReader only)."""
        raise NotImplementedError

    def _fail(self, code: int, reason: str) -> NoReturn:
        self._error = (code, reason)
        self._state = _DEAD
        raise FrameError(code, reason)


class FrameTracker(_FrameParser):
    """Follow the frames of ONE direction without keeping payloads (HEADERS relay mode).

    ``masked`` is True for client-to-server traffic (every frame must be masked) and False for
    server-to-client (none may be). ``rsv_allowed`` holds the RSV bits the handshake negotiated
    (0x40 with permessage-deflate). ``max_frame_size`` > 0 caps each frame's payload (1009).
    ``max_message_size`` > 0 caps a data message's payload, its fragments added up (control
    frames do not count; 1009). Both are checked as soon as a frame's length is known, so the
    frame that would go over is refused before any of its payload. With ``validate_utf8``
    the payload of text messages is checked as it passes, across fragments and feeds
    (1007, as soon as a byte makes the text invalid); a compressed message (RSV1) is not
    checked: it is UTF-8 only once inflated. Payloads are read for nothing else.
    """

    __slots__ = ()

    def __init__(self, masked: bool, rsv_allowed: int = 0, max_frame_size: int = 0,
                 max_message_size: int = 0, validate_utf8: bool = False) -> None:
        super().__init__(bool(masked), rsv_allowed, max_frame_size, max_message_size, validate_utf8)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Advance over ``data`` (any chunking); raise ``FrameError`` on a violation."""
        self._feed(data)

    def feed_to_frame(self, data: bytes | bytearray | memoryview, pong_only: bool = True) -> int:
        """Like ``feed``, but stop where a frame begins in ``data`` (a Pong frame only, with
        ``pong_only``), before its first byte; return the bytes consumed (``len(data)``
        when no such frame begins in it). The relay's keep-alive uses it to cut its own
        Pongs out of a stream and to put its Pings between frames (proxy/relay.py)."""
        if isinstance(data, (bytes, bytearray)):
            return self._consume_to(data, pong_only)
        with memoryview(data) as outer, outer.cast("B") as view:
            return self._consume_to(view, pong_only)

    def _consume_to(self, data: bytes | bytearray | memoryview, pong_only: bool) -> int:
        # _consume's loop with the stop added (a copy, so that every track-mode read, which
        # runs _consume, pays nothing for it; keep the two in step, as in the C twin).
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
                    self._payload_seen(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_frame()
            elif state == _HEAD0:
                if not pong_only or data[pos] & 0x0F == OP_PONG:
                    self._bytes_in -= end - pos  # the rest is not consumed
                    return pos
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
        return end


class FrameReader(_FrameParser):
    """Parse whole frames with unmasked payloads and their wire bytes (inspect relay mode).

    ``masked`` None accepts masked and unmasked frames. ``max_size`` > 0 caps each frame's
    payload (1009), checked as soon as the length is known, before any of it is buffered.
    Each ``Frame`` carries its original bytes in ``raw``; a frame that arrives whole in a
    ``bytes`` chunk of its own gets that very object, with no copy.
    """

    __slots__ = ("_chunk", "_chunk_offset", "_spill")

    _collect_all = True

    def __init__(
        self, masked: bool | None = None, max_size: int = 64 * 1024 * 1024, rsv_allowed: int = 0
    ) -> None:
        super().__init__(masked, rsv_allowed, max_size)
        self._chunk: bytes | bytearray | memoryview = b""  # the data being fed
        self._chunk_offset = 0  # its stream offset
        self._spill = bytearray()  # the current frame's bytes from earlier feeds

    @property
    def completed(self) -> list[Frame]:
        """The frames the last ``feed`` completed: its result, or, when it raised
        ``FrameError``, the frames before the violation (a relay still forwards those)."""
        return self._out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Return the frames completed by ``data``; raise ``FrameError`` on a violation."""
        self._out = []
        self._feed(data)
        return self._out

    def _consume(self, data: bytes | bytearray | memoryview) -> None:
        self._chunk = data
        self._chunk_offset = self._bytes_in
        try:
            super()._consume(data)
            if self._state != _HEAD0:  # a frame goes on in the next feed: keep its bytes
                self._spill += data[max(self._frame_start - self._chunk_offset, 0) :]
        finally:
            self._chunk = b""  # never hold the caller's buffer

    def _take_frame(self) -> Frame:
        start = self._frame_start - self._chunk_offset  # < 0: it began in an earlier feed
        stop = start + self._head_len + self._length
        if start >= 0:
            raw = bytes(self._chunk[start:stop])  # the chunk itself if it is exactly this frame
        else:
            self._spill += self._chunk[:stop]
            raw = bytes(self._spill)
            self._spill = bytearray()
        head_len = self._head_len
        if self._has_mask:
            payload = apply_mask(memoryview(raw)[head_len:], raw[head_len - 4 : head_len])
        else:
            payload = raw[head_len:]
        return Frame(self._fin, self._opcode, payload, self._rsv, raw)


@dataclass(frozen=True, slots=True)
class Message:
    """One whole data message from ``MessageAssembler``.

    ``opcode`` is OP_TEXT or OP_BINARY; ``payload`` joins its frames' payloads. ``rsv`` holds the
    first frame's RSV bits: ``rsv & 0x40`` means permessage-deflate compressed it (RFC 7692), so
    the caller inflates ``payload`` first (and checks a text message's UTF-8 after that). ``raw``
    joins its frames' wire bytes, so an unchanged message is forwarded as it came (empty if a
    frame had no ``raw``); ``frames`` counts them. Equality ignores ``raw`` and ``frames``.
    """

    opcode: int
    payload: bytes
    rsv: int = 0
    raw: bytes = field(default=b"", compare=False, repr=False)
    frames: int = field(default=1, compare=False, repr=False)


def _utf8_sequence_length(lead: int) -> int:
    """Bytes of the character a lead byte starts (2..4), 0 if it cannot start one."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


# The second byte's range after these lead bytes (no overlongs, no surrogates, <= U+10FFFF).
_UTF8_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _utf8_partial_ok(tail: bytes) -> bool:
    """True if ``tail``, shorter than the character its lead byte starts, can still end well."""
    length = _utf8_sequence_length(tail[0])
    if not length or len(tail) >= length:
        return False
    if len(tail) >= 2:
        low, high = _UTF8_SECOND_BYTE.get(tail[0], (0x80, 0xBF))
        if not low <= tail[1] <= high:
            return False
    return all(0x80 <= byte <= 0xBF for byte in tail[2:])


def _utf8_unfinished_tail(data: bytes) -> bytes | None:
    """The unfinished character at the end of ``data`` (b"" if none) when all of ``data`` can
    begin a valid UTF-8 text; None when it cannot. Mirrors wsp_utf8_stream.h."""
    cut = len(data)
    for back in range(1, min(3, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            break
        if byte >= 0xC0:  # a lead byte: unfinished if its character needs more bytes
            if back < _utf8_sequence_length(byte):
                cut = len(data) - back
            break
    try:
        str(data[:cut], "utf-8")
    except UnicodeDecodeError:
        return None
    tail = data[cut:]
    if tail and not _utf8_partial_ok(tail):
        return None
    return tail


class MessageAssembler:
    """Join the data frames of ONE direction into whole messages (WS_MESSAGE plugins).

    ``feed`` takes the frames a ``FrameReader`` returned and gives back, in order, a ``Message``
    for each data message completed and every control frame as it came: control frames may
    arrive between the fragments of a message, so they come out before that message.
    ``max_size`` > 0 caps a message's payload (1009): the frame that takes the running total
    over it is refused before it is buffered. With ``validate_utf8`` a text message must be
    UTF-8 (1007); fragments are checked as they come, so a message fails on the fragment that
    breaks it. A compressed message (RSV1) is not checked: it is UTF-8 only once inflated.
    The header rules (opcodes, RSV bits, control frames) are the reader's; this checks what
    needs the message: the order of continuation frames (1002), the size and the UTF-8.
    """

    __slots__ = (
        "_max_size", "_validate_utf8", "_opcode", "_rsv", "_size", "_check_utf8", "_utf8_tail",
        "_payloads", "_raws", "_messages", "_error", "_out",
    )  # fmt: skip

    def __init__(self, max_size: int = 64 * 1024 * 1024, validate_utf8: bool = True) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0 (0 = no limit)")
        self._max_size = max_size
        self._validate_utf8 = bool(validate_utf8)
        # the message being assembled; opcode 0 when none is
        self._opcode = 0
        self._rsv = 0
        self._size = 0
        self._check_utf8 = False
        self._utf8_tail = b""  # an unfinished character at the end of the fragments so far
        self._payloads: list[bytes] = []
        self._raws: list[bytes] = []
        self._messages = 0
        self._error: tuple[int, str] | None = None
        self._out: list[Frame | Message] = []

    @property
    def messages(self) -> int:
        """Whole messages returned so far."""
        return self._messages

    @property
    def in_message(self) -> bool:
        """True while a fragmented message waits for its last frame."""
        return self._opcode != 0

    @property
    def completed(self) -> list[Frame | Message]:
        """What the last ``feed`` returned or, when it raised, what came before the violation."""
        return self._out

    def feed(self, frames: Iterable[Frame]) -> list[Frame | Message]:
        """Return the messages and control frames completed by ``frames``, in order; raise
        ``FrameError`` on a violation."""
        self._out = out = []
        if self._error is not None:
            raise FrameError(*self._error)
        for frame in frames:
            opcode = frame.opcode
            if OP_CLOSE <= opcode <= OP_PONG:
                out.append(frame)
                continue
            if opcode == OP_CONT:
                if not self._opcode:
                    self._fail(1002, "continuation frame with no message to continue")
            elif opcode == OP_TEXT or opcode == OP_BINARY:
                if self._opcode:
                    self._fail(1002, "new data frame inside a fragmented message")
                self._start(opcode, frame.rsv)
            else:
                self._fail(1002, f"reserved opcode {opcode}")
            self._add(frame)
        return out

    def _start(self, opcode: int, rsv: int) -> None:
        self._opcode = opcode
        self._rsv = rsv
        self._size = 0
        self._check_utf8 = opcode == OP_TEXT and self._validate_utf8 and not rsv & 0x40
        self._utf8_tail = b""
        self._payloads = []
        self._raws = []

    def _add(self, frame: Frame) -> None:
        payload, fin = frame.payload, frame.fin
        first = not self._payloads
        size = self._size + len(payload)
        if self._max_size and size > self._max_size:
            self._fail(1009, f"message of at least {size} bytes over the {self._max_size} byte limit")
        if self._check_utf8:
            tail = _utf8_unfinished_tail(self._utf8_tail + payload)
            if tail is None or (fin and tail):  # invalid, or the message ends inside a character
                self._fail(1007, "invalid UTF-8 in a text message")
            self._utf8_tail = tail
        self._size = size
        if fin and first:
            message = Message(self._opcode, bytes(payload), self._rsv, bytes(frame.raw), 1)
        else:
            self._payloads.append(payload)
            self._raws.append(frame.raw)
            if not fin:
                return
            raws = self._raws
            raw = b"".join(raws) if all(raws) else b""
            message = Message(self._opcode, b"".join(self._payloads), self._rsv, raw, len(raws))
            self._payloads = []
            self._raws = []
        self._opcode = 0
        self._messages += 1
        self._out.append(message)

    def _fail(self, code: int, reason: str) -> NoReturn:
        self._error = (code, reason)
        raise FrameError(code, reason)


def build_frame(
    opcode: int, payload: bytes | bytearray | memoryview, *, fin: bool = True, mask: bool, rsv: int = 0
) -> bytes:
    """Serialize one frame; with ``mask`` the key comes from ``os.urandom(4)`` (RFC 6455 §10.3)."""
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode must be 0..15, not {opcode}")
    if rsv & ~RSV_BITS:
        raise ValueError(f"rsv must be a subset of 0x70, not {rsv:#x}")
    payload = bytes(memoryview(payload))  # any buffer, as the compiled twin takes
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
