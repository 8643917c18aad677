# cython: language_level=3
"""WebSocket frames (RFC 6455 §5), compiled twin of ``wsproxy.protocol.frames``.

Same classes, functions, attributes, errors and vectors as the pure module: ``FrameTracker``
(headers only: the track relay mode), ``FrameReader`` and ``Frame`` (whole frames with their
wire bytes: the inspect mode), ``MessageAssembler`` and ``Message`` (WS_MESSAGE), and
``build_frame`` / ``build_close``. The cdef interface and the state layouts are in ``frames.pxd``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    _PyBytes_Resize,
)
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.string cimport memcpy

from os import urandom

from wsproxy.errors import FrameError

__all__ = [
    "Frame",
    "FrameReader",
    "FrameTracker",
    "Message",
    "MessageAssembler",
    "build_close",
    "build_frame",
]

DEF RSV_BITS = 0x70
DEF RSV1 = 0x40                # permessage-deflate (RFC 7692)
DEF MAX_CONTROL_PAYLOAD = 125
DEF OP_CONT = 0
DEF OP_TEXT = 1
DEF OP_BINARY = 2
DEF OP_CLOSE = 8
DEF OP_PONG = 10
DEF MASK_EITHER = 2            # FrameReader(masked=None): masked and unmasked frames pass

cdef extern from "Python.h":
    # The spill buffer is a bare owned PyObject* (it is resized in place), so its bytes are
    # reached without a temporary object reference.
    char *spill_bytes "PyBytes_AS_STRING" (PyObject *o) nogil


cdef inline bint valid_close_code(unsigned int code) noexcept nogil:
    # RFC 6455 §7.4 plus the IANA registry (1012-1014).
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# ---- the header and Close rules, shared by FrameTracker and FrameReader --------------------------
# Each check returns NO_VIOLATION or what it found, without touching Python; only a failure
# builds the FrameError, from violation_code() and violation_reason().

cdef enum Violation:
    NO_VIOLATION
    RESERVED_OPCODE
    RSV_NOT_NEGOTIATED
    RSV_ON_CONTROL
    RSV_ON_CONTINUATION
    FRAGMENTED_CONTROL
    ORPHAN_CONTINUATION
    DATA_INSIDE_MESSAGE
    NOT_MASKED
    MASKED
    CONTROL_TOO_LONG
    CLOSE_ONE_BYTE
    LENGTH_TOP_BIT
    FRAME_TOO_BIG
    INVALID_CLOSE_CODE
    CLOSE_REASON_NOT_UTF8


cdef inline Violation first_byte_violation(uint8_t byte, uint8_t rsv_allowed,
                                           bint fragmented) noexcept nogil:
    cdef uint8_t opcode = byte & 0x0F
    cdef uint8_t rsv = byte & RSV_BITS
    cdef bint is_control = opcode >= OP_CLOSE
    if 3 <= opcode <= 7 or opcode >= 11:
        return RESERVED_OPCODE
    if rsv:
        if rsv & ~rsv_allowed:
            return RSV_NOT_NEGOTIATED
        # permessage-deflate (RFC 7692 §6): RSV1 only on the first frame of a message
        if is_control:
            return RSV_ON_CONTROL
        if opcode == OP_CONT:
            return RSV_ON_CONTINUATION
    if is_control:
        if byte < 0x80:
            return FRAGMENTED_CONTROL
    elif opcode == OP_CONT:
        if not fragmented:
            return ORPHAN_CONTINUATION
    elif fragmented:
        return DATA_INSIDE_MESSAGE
    return NO_VIOLATION


cdef inline Violation second_byte_violation(uint8_t opcode, uint8_t byte, int mask_rule) noexcept nogil:
    cdef bint has_mask = byte >= 0x80
    cdef uint8_t length = byte & 0x7F
    if mask_rule != MASK_EITHER and has_mask != mask_rule:
        return NOT_MASKED if mask_rule else MASKED
    if opcode >= OP_CLOSE:
        if length > MAX_CONTROL_PAYLOAD:
            return CONTROL_TOO_LONG
        if length == 1 and opcode == OP_CLOSE:
            return CLOSE_ONE_BYTE
    return NO_VIOLATION


cdef inline Violation length_violation(uint64_t length, uint64_t max_frame_size) noexcept nogil:
    if length >> 63:
        return LENGTH_TOP_BIT
    if max_frame_size and length > max_frame_size:
        return FRAME_TOO_BIG
    return NO_VIOLATION


cdef inline Violation close_payload_violation(const unsigned char *payload, size_t size,
                                              unsigned int *code) noexcept nogil:
    # An unmasked Close payload: its code (1005 when empty) goes to *code.
    if size == 0:
        code[0] = 1005
        return NO_VIOLATION
    # second_byte_violation already refused a 1-byte payload
    code[0] = (<unsigned int>payload[0] << 8) | payload[1]
    if not valid_close_code(code[0]):
        return INVALID_CLOSE_CODE
    if not wsp_utf8_valid(payload + 2, size - 2):
        return CLOSE_REASON_NOT_UTF8
    return NO_VIOLATION


cdef inline int violation_code(Violation violation) noexcept nogil:
    if violation == FRAME_TOO_BIG:
        return 1009
    if violation == CLOSE_REASON_NOT_UTF8:
        return 1007
    return 1002


cdef str violation_reason(Violation violation, uint64_t value, uint64_t limit):
    # value: the opcode, length or close code the violation is about; limit: max_frame_size
    if violation == RESERVED_OPCODE:
        return f"reserved opcode {value}"
    if violation == RSV_NOT_NEGOTIATED:
        return "RSV bits not negotiated"
    if violation == RSV_ON_CONTROL:
        return "RSV bit on a control frame"
    if violation == RSV_ON_CONTINUATION:
        return "RSV bit on a continuation frame"
    if violation == FRAGMENTED_CONTROL:
        return "fragmented control frame"
    if violation == ORPHAN_CONTINUATION:
        return "continuation frame with no message to continue"
    if violation == DATA_INSIDE_MESSAGE:
        return "new data frame inside a fragmented message"
    if violation == NOT_MASKED:
        return "frame not masked"
    if violation == MASKED:
        return "frame masked"
    if violation == CONTROL_TOO_LONG:
        return "control frame payload over 125 bytes"
    if violation == CLOSE_ONE_BYTE:
        return "close frame with a 1-byte payload"
    if violation == LENGTH_TOP_BIT:
        return "64-bit length with the top bit set"
    if violation == FRAME_TOO_BIG:
        return f"frame of {value} bytes over the {limit} byte limit"
    if violation == INVALID_CLOSE_CODE:
        return f"invalid close code {value}"
    return "invalid UTF-8 in the close reason"


# ---- FrameTracker: the track relay mode ----------------------------------------------------------

DEF UTF8_BLOCK = 2048  # a masked text payload is unmasked this much at a time for the UTF-8 check


cdef class FrameTracker:
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

    def __init__(self, masked, int rsv_allowed=0, long long max_frame_size=0,
                 long long max_message_size=0, validate_utf8=False):
        if rsv_allowed & ~RSV_BITS:
            raise ValueError(f"rsv_allowed must be a subset of 0x70, not {rsv_allowed:#x}")
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0 (0 = no limit)")
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0 (0 = no limit)")
        self._masked = bool(masked)
        self._rsv_allowed = <uint8_t>rsv_allowed
        self._max_frame_size = <uint64_t>max_frame_size
        self._max_message_size = <uint64_t>max_message_size
        self._validate_utf8 = bool(validate_utf8)
        self._state = HEAD0
        self._close_code = -1

    @property
    def frames(self):
        """Complete frames seen."""
        return self._frames

    @property
    def messages(self):
        """Complete data messages seen (a FIN text, binary or continuation frame)."""
        return self._messages

    @property
    def at_boundary(self):
        """True when no frame is partly seen (and no error was raised)."""
        return self._state == HEAD0

    @property
    def close_code(self):
        """Code of the first complete Close frame: -1 before one, 1005 if it had no payload."""
        return self._close_code

    @property
    def bytes_in(self):
        """Total bytes passed to ``feed``."""
        return self._bytes_in

    @property
    def frame_start(self):
        """Stream offset where the frame being read began (``bytes_in`` at a boundary).

        After a FrameError it is where the offending frame began, so a relay can still
        forward the valid frames that came before it in the same chunk.
        """
        if self._state == HEAD0:
            return self._bytes_in
        return self._frame_start

    def feed(self, data):
        """Advance over ``data`` (any chunking); raise ``FrameError`` on a violation."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._consume(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def feed_to_frame(self, data, pong_only=True):
        """Like ``feed``, but stop where a frame begins in ``data`` (a Pong frame only, with
        ``pong_only``), before its first byte; return the bytes consumed (``len(data)``
        when no such frame begins in it). The relay's keep-alive uses it to cut its own
        Pongs out of a stream and to put its Pings between frames (proxy/relay.py)."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._consume_to(<const uint8_t *>view.buf, view.len, pong_only)
        finally:
            PyBuffer_Release(&view)

    cdef int _consume(self, const uint8_t *data, Py_ssize_t size) except -1:
        cdef Py_ssize_t pos = 0
        cdef uint64_t take
        self._bytes_in += <uint64_t>size
        if self._state == DEAD:
            raise FrameError(self._error_code, self._error_reason)
        while pos < size:
            if self._state == PAYLOAD:
                take = <uint64_t>(size - pos)
                if self._remaining < take:
                    take = self._remaining
                if self._collect:  # a Close payload, or a text payload to check
                    self._payload_seen(data + pos, take)
                pos += <Py_ssize_t>take
                self._remaining -= take
                if self._remaining == 0:
                    self._end_frame()
            elif self._state == HEAD0:
                self._frame_start = self._bytes_in - <uint64_t>size + <uint64_t>pos
                self._first_byte(data[pos])
                pos += 1
            elif self._state == HEAD1:
                self._second_byte(data[pos])
                pos += 1
            elif self._state == LENGTH:
                self._length = (self._length << 8) | data[pos]
                pos += 1
                self._need -= 1
                if self._need == 0:
                    self._length_done()
            else:  # MASK_KEY
                self._key[4 - self._need] = data[pos]
                pos += 1
                self._need -= 1
                if self._need == 0:
                    self._header_done()
        return 0

    cdef Py_ssize_t _consume_to(self, const uint8_t *data, Py_ssize_t size, bint pong_only) except -1:
        # _consume's loop, stopping where a frame (a Pong, with pong_only) begins; returns the
        # bytes consumed. A copy rather than a shared inline: GCC would not inline a shared
        # loop into both, and _consume is every track-mode read (keep the two in step).
        cdef Py_ssize_t pos = 0
        cdef uint64_t take
        self._bytes_in += <uint64_t>size
        if self._state == DEAD:
            raise FrameError(self._error_code, self._error_reason)
        while pos < size:
            if self._state == PAYLOAD:
                take = <uint64_t>(size - pos)
                if self._remaining < take:
                    take = self._remaining
                if self._collect:  # a Close payload, or a text payload to check
                    self._payload_seen(data + pos, take)
                pos += <Py_ssize_t>take
                self._remaining -= take
                if self._remaining == 0:
                    self._end_frame()
            elif self._state == HEAD0:
                if pong_only == 0 or (data[pos] & 0x0F) == OP_PONG:
                    self._bytes_in -= <uint64_t>(size - pos)  # the rest is not consumed
                    return pos
                self._frame_start = self._bytes_in - <uint64_t>size + <uint64_t>pos
                self._first_byte(data[pos])
                pos += 1
            elif self._state == HEAD1:
                self._second_byte(data[pos])
                pos += 1
            elif self._state == LENGTH:
                self._length = (self._length << 8) | data[pos]
                pos += 1
                self._need -= 1
                if self._need == 0:
                    self._length_done()
            else:  # MASK_KEY
                self._key[4 - self._need] = data[pos]
                pos += 1
                self._need -= 1
                if self._need == 0:
                    self._header_done()
        return size

    cdef inline int _first_byte(self, uint8_t byte) except -1:
        cdef Violation violation = first_byte_violation(byte, self._rsv_allowed, self._fragmented)
        if violation:
            return self._fail(violation_code(violation), violation_reason(violation, byte & 0x0F, 0))
        self._fin = byte >= 0x80
        self._opcode = byte & 0x0F
        self._collect = self._opcode == OP_CLOSE
        if self._validate_utf8 and self._opcode < OP_CLOSE:
            if self._opcode != OP_CONT:  # a message begins
                self._check_utf8 = self._opcode == OP_TEXT and not (byte & RSV1)  # deflated: not UTF-8 yet
                self._utf8.len = 0
            self._collect = self._check_utf8
        self._state = HEAD1
        return 0

    cdef inline int _second_byte(self, uint8_t byte) except -1:
        cdef uint8_t length = byte & 0x7F
        cdef Violation violation = second_byte_violation(self._opcode, byte, self._masked)
        if violation:
            return self._fail(violation_code(violation), violation_reason(violation, 0, 0))
        self._has_mask = byte >= 0x80
        if length < 126:
            self._length = length
            return self._length_done()
        # 126: a 16-bit length follows, 127: a 64-bit one
        self._length = 0
        self._need = 2 if length == 126 else 8
        self._state = LENGTH
        return 0

    cdef inline int _length_done(self) except -1:
        cdef Violation violation = length_violation(self._length, self._max_frame_size)
        cdef uint64_t message_size
        if violation:
            return self._fail(violation_code(violation),
                              violation_reason(violation, self._length, self._max_frame_size))
        if self._max_message_size and self._opcode < OP_CLOSE:  # control frames do not count
            message_size = self._length
            if self._opcode == OP_CONT:
                message_size += self._message_size  # no overflow: each length is below 2**63
            if message_size > self._max_message_size:
                return self._message_too_big(message_size)
            self._message_size = message_size
        self._remaining = self._length
        if self._has_mask:
            self._need = 4
            self._state = MASK_KEY
            return 0
        return self._header_done()

    cdef inline int _header_done(self) except -1:
        self._close_len = 0
        if self._remaining:
            self._state = PAYLOAD
            return 0
        return self._end_frame()

    cdef inline int _end_frame(self) except -1:
        if self._collect:
            if self._opcode == OP_CLOSE:
                self._close_frame_done()
            else:
                self._text_frame_done()
        if self._opcode < OP_CLOSE:
            self._fragmented = not self._fin
            if self._fin:
                self._messages += 1
        self._frames += 1
        self._state = HEAD0
        return 0

    cdef int _close_frame_done(self) except -1:
        # Kept out of line: Close frames are rare, and this is the only place reading payload.
        cdef unsigned int code
        cdef Violation violation
        if self._has_mask:
            wsp_mask(self._close_payload, self._close_payload, self._close_len, self._key, 0)
        violation = close_payload_violation(self._close_payload, self._close_len, &code)
        if violation:
            return self._fail(violation_code(violation), violation_reason(violation, code, 0))
        if self._close_code < 0:  # the first Close is the one that counts
            self._close_code = <int32_t>code
        return 0

    cdef int _fail(self, int code, str reason) except -1:
        self._error_code = code
        self._error_reason = reason
        self._state = DEAD
        raise FrameError(code, reason)

    cdef int _message_too_big(self, uint64_t size) except -1:
        return self._fail(1009, f"message of at least {size} bytes over the {self._max_message_size} byte limit")

    cdef int _payload_seen(self, const uint8_t *data, uint64_t size) except -1:
        # Payload of a frame with _collect: a Close frame's is kept (at most 125 bytes in all);
        # a checked text frame's goes through the UTF-8 check, unmasked first if need be.
        cdef unsigned char plain[UTF8_BLOCK]
        cdef size_t phase
        cdef uint64_t n
        if self._opcode == OP_CLOSE:
            memcpy(self._close_payload + self._close_len, data, <size_t>size)
            self._close_len += <unsigned int>size
            return 0
        if not self._has_mask:
            if not wsp_utf8_stream_feed(&self._utf8, data, <size_t>size):
                return self._fail(1007, "invalid UTF-8 in a text message")
            return 0
        phase = <size_t>((self._length - self._remaining) & 3)  # the key stream goes on from here
        while size:
            n = size if size < UTF8_BLOCK else UTF8_BLOCK
            wsp_mask(data, plain, <size_t>n, self._key, phase)
            if not wsp_utf8_stream_feed(&self._utf8, plain, <size_t>n):
                return self._fail(1007, "invalid UTF-8 in a text message")
            data += n
            size -= n
            phase = (phase + <size_t>n) & 3
        return 0

    cdef int _text_frame_done(self) except -1:
        # A checked text frame ended: a message must not end inside a character.
        if self._fin and self._utf8.len:
            return self._fail(1007, "invalid UTF-8 in a text message")
        return 0


# ---- FrameReader and Frame: the inspect relay mode -----------------------------------------------


cdef class Frame:
    """One frame as read by ``FrameReader``; ``payload`` is already unmasked.

    ``raw`` is the frame exactly as it came off the wire (header and still-masked payload), so
    an unchanged frame is forwarded with one ``write(frame.raw)`` and no re-serialization. It is
    empty for a frame built by code. Equality ignores it: two frames with the same content are
    equal whatever their mask keys.
    """

    def __init__(self, fin, int opcode, bytes payload, int rsv=0, bytes raw=b""):
        self.fin = fin
        self.opcode = opcode
        self.payload = payload
        self.rsv = rsv
        self.raw = raw

    def __eq__(self, other):
        if type(other) is not Frame:
            return NotImplemented
        cdef Frame that = <Frame>other
        return (self.fin == that.fin and self.opcode == that.opcode and self.rsv == that.rsv
                and self.payload == that.payload)

    def __hash__(self):
        return hash((self.fin, self.opcode, self.payload, self.rsv))

    def __repr__(self):
        return f"Frame(fin={self.fin!r}, opcode={self.opcode!r}, payload={self.payload!r}, rsv={self.rsv!r})"


cdef class FrameReader:
    """Parse whole frames with unmasked payloads and their wire bytes (inspect relay mode).

    ``masked`` None accepts masked and unmasked frames. ``max_size`` > 0 caps each frame's
    payload (1009), checked as soon as the length is known, before any of it is buffered.
    Each ``Frame`` carries its original bytes in ``raw``; a frame that arrives whole in a
    ``bytes`` chunk of its own gets that very object, with no copy.
    """

    def __init__(self, masked=None, long long max_size=64 * 1024 * 1024, int rsv_allowed=0):
        if rsv_allowed & ~RSV_BITS:
            raise ValueError(f"rsv_allowed must be a subset of 0x70, not {rsv_allowed:#x}")
        if max_size < 0:
            raise ValueError("max_frame_size must be >= 0 (0 = no limit)")
        self._mask_rule = MASK_EITHER if masked is None else bool(masked)
        self._rsv_allowed = <uint8_t>rsv_allowed
        self._max_frame_size = <uint64_t>max_size
        self._state = HEAD0
        self._close_code = -1
        self._completed = []

    def __dealloc__(self):
        Py_XDECREF(self._spill)

    @property
    def frames(self):
        """Complete frames seen."""
        return self._frames

    @property
    def messages(self):
        """Complete data messages seen (a FIN text, binary or continuation frame)."""
        return self._messages

    @property
    def at_boundary(self):
        """True when no frame is partly seen (and no error was raised)."""
        return self._state == HEAD0

    @property
    def close_code(self):
        """Code of the first complete Close frame: -1 before one, 1005 if it had no payload."""
        return self._close_code

    @property
    def bytes_in(self):
        """Total bytes passed to ``feed``."""
        return self._bytes_in

    @property
    def frame_start(self):
        """Stream offset where the frame being read began (``bytes_in`` at a boundary).

        After a FrameError it is where the offending frame began.
        """
        if self._state == HEAD0:
            return self._bytes_in
        return self._frame_start

    @property
    def completed(self):
        """The frames the last ``feed`` completed: its result, or, when it raised
        ``FrameError``, the frames before the violation (a relay still forwards those)."""
        return self._completed

    def feed(self, data):
        """Return the frames completed by ``data``; raise ``FrameError`` on a violation."""
        cdef Py_buffer view
        self._completed = []
        if PyBytes_CheckExact(data):
            self._consume(data, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._consume(None, <const uint8_t *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        return self._completed

    cdef int _consume(self, object chunk, const uint8_t *data, Py_ssize_t size) except -1:
        # chunk: data's bytes object, or None for another buffer. start: where the frame being
        # read began in data, -1 if in an earlier feed.
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t start = -1
        cdef uint64_t take
        cdef uint8_t byte
        self._bytes_in += <uint64_t>size
        if self._state == DEAD:
            raise FrameError(self._error_code, self._error_reason)
        while True:
            if self._state == PAYLOAD:  # also right after a header with an empty payload
                take = <uint64_t>(size - pos)
                if self._remaining < take:
                    take = self._remaining
                pos += <Py_ssize_t>take
                self._remaining -= take
                if self._remaining:  # the payload goes on in the next feed
                    return self._spill_frame(data, size)
                self._end_frame(chunk, data, start, pos)
            if pos == size:
                return 0
            byte = data[pos]
            if self._state == HEAD0:
                start = pos
                self._frame_start = self._bytes_in - <uint64_t>size + <uint64_t>pos
                self._head_len = 0
            self._head[self._head_len] = byte
            self._head_len += 1
            pos += 1
            if self._state == HEAD0:
                self._first_byte(byte)
            elif self._state == HEAD1:
                self._second_byte(byte)
            elif self._state == LENGTH:
                self._length = (self._length << 8) | byte
                self._need -= 1
                if self._need == 0:
                    self._length_done()
            else:  # MASK_KEY: the key stays in _head
                self._need -= 1
                if self._need == 0:
                    self._state = PAYLOAD

    cdef inline int _first_byte(self, uint8_t byte) except -1:
        cdef Violation violation = first_byte_violation(byte, self._rsv_allowed, self._fragmented)
        if violation:
            return self._fail(violation_code(violation), violation_reason(violation, byte & 0x0F, 0))
        self._fin = byte >= 0x80
        self._opcode = byte & 0x0F
        self._rsv = byte & RSV_BITS
        self._state = HEAD1
        return 0

    cdef inline int _second_byte(self, uint8_t byte) except -1:
        cdef uint8_t length = byte & 0x7F
        cdef Violation violation = second_byte_violation(self._opcode, byte, self._mask_rule)
        if violation:
            return self._fail(violation_code(violation), violation_reason(violation, 0, 0))
        self._has_mask = byte >= 0x80
        if length < 126:
            self._length = length
            return self._length_done()
        # 126: a 16-bit length follows, 127: a 64-bit one
        self._length = 0
        self._need = 2 if length == 126 else 8
        self._state = LENGTH
        return 0

    cdef inline int _length_done(self) except -1:
        cdef Violation violation = length_violation(self._length, self._max_frame_size)
        if violation:
            return self._fail(violation_code(violation),
                              violation_reason(violation, self._length, self._max_frame_size))
        self._remaining = self._length
        if self._has_mask:
            self._need = 4
            self._state = MASK_KEY
        else:
            self._state = PAYLOAD
        return 0

    cdef int _end_frame(self, object chunk, const uint8_t *data, Py_ssize_t start,
                        Py_ssize_t end) except -1:
        # The frame ends at data[end]; it began at data[start], or in an earlier feed (start -1).
        cdef bytes raw
        cdef bytes payload
        cdef Frame frame
        cdef const unsigned char *body
        cdef unsigned char *out
        cdef unsigned int code
        cdef Violation violation
        if start < 0:
            self._spill_frame(data, end)
            raw = <bytes>self._spill  # the spill was grown to exactly this frame's size
            Py_XDECREF(self._spill)
            self._spill = NULL
            self._spill_len = self._spill_capacity = 0
        elif start == 0 and chunk is not None and end == PyBytes_GET_SIZE(chunk):
            raw = <bytes>chunk  # the frame is the whole chunk: share it
        else:
            raw = PyBytes_FromStringAndSize(<const char *>data + start, end - start)
        payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>self._length)
        body = <const unsigned char *>PyBytes_AS_STRING(raw) + self._head_len
        out = <unsigned char *>PyBytes_AS_STRING(payload)
        if self._has_mask:
            wsp_mask(body, out, <size_t>self._length, self._head + self._head_len - 4, 0)
        else:
            memcpy(out, body, <size_t>self._length)
        if self._opcode == OP_CLOSE:
            violation = close_payload_violation(out, <size_t>self._length, &code)
            if violation:
                return self._fail(violation_code(violation), violation_reason(violation, code, 0))
            if self._close_code < 0:  # the first Close is the one that counts
                self._close_code = <int32_t>code
        if self._opcode < OP_CLOSE:
            self._fragmented = not self._fin
            if self._fin:
                self._messages += 1
        self._frames += 1
        self._state = HEAD0
        frame = Frame.__new__(Frame)
        frame.fin = self._fin
        frame.opcode = self._opcode
        frame.payload = payload
        frame.rsv = self._rsv
        frame.raw = raw
        self._completed.append(frame)
        return 0

    cdef int _spill_frame(self, const uint8_t *data, Py_ssize_t end) except -1:
        # Keep this frame's bytes up to data[end], the payload being read: the first spill is
        # the header (from _head), then the payload seen so far, which is all in this chunk.
        cdef Py_ssize_t seen = <Py_ssize_t>(self._length - self._remaining)
        if self._spill_len == 0:
            self._spill_append(self._head, self._head_len)
            return self._spill_append(data + end - seen, seen)
        return self._spill_append(data, end)

    cdef int _spill_append(self, const void *src, Py_ssize_t size) except -1:
        cdef Py_ssize_t needed = self._spill_len + size
        cdef uint64_t capacity
        cdef uint64_t frame_size = self._head_len + self._length
        cdef bytes spill
        if needed > self._spill_capacity:
            # Grow geometrically, but never past the frame's size: memory follows the bytes
            # actually received, not the length a peer claims, and the last append fills the
            # buffer exactly, so it becomes the Frame's raw as it is.
            capacity = <uint64_t>self._spill_capacity * 2
            if capacity < <uint64_t>needed:
                capacity = <uint64_t>needed
            if capacity < 4096:
                capacity = 4096
            if capacity > frame_size:
                capacity = frame_size
            if self._spill == NULL:
                spill = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>capacity)
                Py_INCREF(spill)
                self._spill = <PyObject *>spill
            else:
                _PyBytes_Resize(&self._spill, <Py_ssize_t>capacity)
            self._spill_capacity = <Py_ssize_t>capacity
        memcpy(spill_bytes(self._spill) + self._spill_len, src, <size_t>size)
        self._spill_len = needed
        return 0

    cdef int _fail(self, int code, str reason) except -1:
        self._error_code = code
        self._error_reason = reason
        self._state = DEAD
        raise FrameError(code, reason)


# ---- MessageAssembler and Message: WS_MESSAGE ----------------------------------------------------


cdef class Message:
    """One whole data message from ``MessageAssembler``.

    ``opcode`` is OP_TEXT or OP_BINARY; ``payload`` joins its frames' payloads. ``rsv`` holds the
    first frame's RSV bits: ``rsv & 0x40`` means permessage-deflate compressed it (RFC 7692), so
    the caller inflates ``payload`` first (and checks a text message's UTF-8 after that). ``raw``
    joins its frames' wire bytes, so an unchanged message is forwarded as it came (empty if a
    frame had no ``raw``); ``frames`` counts them. Equality ignores ``raw`` and ``frames``.
    """

    def __init__(self, int opcode, bytes payload, int rsv=0, bytes raw=b"", Py_ssize_t frames=1):
        self.opcode = opcode
        self.payload = payload
        self.rsv = rsv
        self.raw = raw
        self.frames = frames

    def __eq__(self, other):
        if type(other) is not Message:
            return NotImplemented
        cdef Message that = <Message>other
        return self.opcode == that.opcode and self.rsv == that.rsv and self.payload == that.payload

    def __hash__(self):
        return hash((self.opcode, self.payload, self.rsv))

    def __repr__(self):
        return f"Message(opcode={self.opcode!r}, payload={self.payload!r}, rsv={self.rsv!r})"


cdef class MessageAssembler:
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

    def __init__(self, long long max_size=64 * 1024 * 1024, validate_utf8=True):
        if max_size < 0:
            raise ValueError("max_size must be >= 0 (0 = no limit)")
        self._max_size = <uint64_t>max_size
        self._validate_utf8 = bool(validate_utf8)
        self._completed = []

    @property
    def messages(self):
        """Whole messages returned so far."""
        return self._messages

    @property
    def in_message(self):
        """True while a fragmented message waits for its last frame."""
        return self._opcode != 0

    @property
    def completed(self):
        """What the last ``feed`` returned or, when it raised, what came before the violation."""
        return self._completed

    def feed(self, frames):
        """Return the messages and control frames completed by ``frames``, in order; raise
        ``FrameError`` on a violation."""
        cdef Frame frame
        self._completed = []
        if self._error_reason is not None:
            raise FrameError(self._error_code, self._error_reason)
        for item in frames:
            if type(item) is Frame:
                frame = <Frame>item
                self._add(frame, frame.fin, frame.opcode, frame.payload, frame.rsv, frame.raw)
            else:  # anything shaped like a Frame (the pure twin's, a plugin's)
                self._add(item, item.fin, item.opcode, bytes(item.payload), item.rsv, bytes(item.raw))
        return self._completed

    cdef int _add(self, object item, bint fin, int opcode, bytes payload, int rsv,
                  bytes raw) except -1:
        cdef Py_ssize_t size = len(payload)
        cdef uint64_t total
        cdef Message message
        if OP_CLOSE <= opcode <= OP_PONG:
            self._completed.append(item)
            return 0
        if opcode == OP_CONT:
            if not self._opcode:
                return self._fail(1002, "continuation frame with no message to continue")
        elif opcode == OP_TEXT or opcode == OP_BINARY:
            if self._opcode:
                return self._fail(1002, "new data frame inside a fragmented message")
            self._opcode = opcode
            self._rsv = rsv
            self._size = 0
            self._frames = 0
            self._check_utf8 = opcode == OP_TEXT and self._validate_utf8 and not rsv & RSV1
            self._utf8.len = 0
            self._raws_complete = True
        else:
            return self._fail(1002, f"reserved opcode {opcode}")
        total = self._size + <uint64_t>size
        if self._max_size and total > self._max_size:
            return self._fail(1009, f"message of at least {total} bytes over the {self._max_size} byte limit")
        if self._check_utf8:
            if (not wsp_utf8_stream_feed(&self._utf8, <const unsigned char *>PyBytes_AS_STRING(payload),
                                         <size_t>size)
                    or (fin and self._utf8.len)):  # invalid, or the message ends inside a character
                return self._fail(1007, "invalid UTF-8 in a text message")
        self._size = total
        self._frames += 1
        self._raws_complete = self._raws_complete and PyBytes_GET_SIZE(raw) > 0
        if fin and self._frames == 1:  # the common case: a whole message in one frame, no copy
            message = Message.__new__(Message)
            message.payload = payload
            message.raw = raw
        else:
            if self._frames == 1:
                self._payloads = [payload]
                self._raws = [raw]
                return 0
            self._payloads.append(payload)
            self._raws.append(raw)
            if not fin:
                return 0
            message = Message.__new__(Message)
            message.payload = b"".join(self._payloads)
            message.raw = b"".join(self._raws) if self._raws_complete else b""
            self._payloads = self._raws = None
        message.opcode = self._opcode
        message.rsv = self._rsv
        message.frames = self._frames
        self._opcode = 0
        self._messages += 1
        self._completed.append(message)
        return 0

    cdef int _fail(self, int code, str reason) except -1:
        self._error_code = code
        self._error_reason = reason
        raise FrameError(code, reason)


# ---- builders ------------------------------------------------------------------------------------


cdef bytes serialize(uint8_t first_byte, object payload, bytes key):
    # One frame in one bytes object: header, then the payload masked with key (None: unmasked).
    cdef Py_buffer view
    cdef unsigned char head[14]
    cdef Py_ssize_t head_len = 2
    cdef Py_ssize_t size
    cdef uint8_t mask_bit = 0x80 if key is not None else 0
    cdef int i
    cdef bytes out
    cdef unsigned char *dst
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        size = view.len
        head[0] = first_byte
        if size < 126:
            head[1] = mask_bit | <uint8_t>size
        elif size < 1 << 16:
            head[1] = mask_bit | 126
            head[2] = <uint8_t>(size >> 8)
            head[3] = <uint8_t>size
            head_len = 4
        else:
            head[1] = mask_bit | 127
            for i in range(8):
                head[2 + i] = <uint8_t>(<uint64_t>size >> (56 - 8 * i))
            head_len = 10
        if key is not None:
            memcpy(head + head_len, PyBytes_AS_STRING(key), 4)
            head_len += 4
        out = PyBytes_FromStringAndSize(NULL, head_len + size)
        dst = <unsigned char *>PyBytes_AS_STRING(out)
        memcpy(dst, head, <size_t>head_len)
        if key is not None:
            wsp_mask(<const unsigned char *>view.buf, dst + head_len, <size_t>size,
                     <const unsigned char *>PyBytes_AS_STRING(key), 0)
        else:
            memcpy(dst + head_len, view.buf, <size_t>size)
    finally:
        PyBuffer_Release(&view)
    return out


def build_frame(opcode, payload, *, fin=True, mask, rsv=0):
    """Serialize one frame; with ``mask`` the key comes from ``os.urandom(4)`` (RFC 6455 §10.3)."""
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode must be 0..15, not {opcode}")
    if rsv & ~RSV_BITS:
        raise ValueError(f"rsv must be a subset of 0x70, not {rsv:#x}")
    return serialize((0x80 if fin else 0) | rsv | opcode, payload, urandom(4) if mask else None)


def build_close(code, reason="", *, mask):
    """Serialize a Close frame; code 1005 ("no status") gives an empty payload."""
    if code == 1005:
        if reason:
            raise ValueError("a Close without a code (1005) cannot carry a reason")
        payload = b""
    else:
        payload = code.to_bytes(2, "big") + reason.encode("utf-8")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("close reason too long (the payload is limited to 125 bytes)")
    return serialize(0x80 | OP_CLOSE, payload, urandom(4) if mask else None)
