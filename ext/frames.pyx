# cython: language_level=3
"""WebSocket frame tracking (RFC 6455 §5), compiled twin of ``wsproxy.protocol.frames``.

Only ``FrameTracker`` is accelerated: same constructor, ``feed``, attributes, errors and vectors
as the pure class. The cdef interface and the state layout are in ``frames.pxd``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.string cimport memcpy

from wsproxy.errors import FrameError

__all__ = ["FrameTracker"]

DEF RSV_BITS = 0x70
DEF MAX_CONTROL_PAYLOAD = 125
DEF OP_CONT = 0
DEF OP_CLOSE = 8


cdef inline bint valid_close_code(unsigned int code) noexcept nogil:
    # RFC 6455 §7.4 plus the IANA registry (1012-1014).
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


cdef class FrameTracker:
    """Follow the frames of ONE direction without keeping payloads (HEADERS relay mode).

    ``masked`` is True for client-to-server traffic (every frame must be masked) and False for
    server-to-client (none may be). ``rsv_allowed`` holds the RSV bits the handshake negotiated
    (0x40 with permessage-deflate). ``max_frame_size`` > 0 caps each frame's payload (1009).
    """

    def __init__(self, masked, int rsv_allowed=0, long long max_frame_size=0):
        if rsv_allowed & ~RSV_BITS:
            raise ValueError(f"rsv_allowed must be a subset of 0x70, not {rsv_allowed:#x}")
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be >= 0 (0 = no limit)")
        self._masked = bool(masked)
        self._rsv_allowed = <uint8_t>rsv_allowed
        self._max_frame_size = <uint64_t>max_frame_size
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
                if self._collect:  # a Close payload: at most 125 bytes in all
                    memcpy(self._close_payload + self._close_len, data + pos, <size_t>take)
                    self._close_len += <unsigned int>take
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

    cdef inline int _first_byte(self, uint8_t byte) except -1:
        cdef uint8_t opcode = byte & 0x0F
        cdef uint8_t rsv = byte & RSV_BITS
        cdef bint fin = byte >= 0x80
        cdef bint is_control = opcode >= OP_CLOSE
        if 3 <= opcode <= 7 or opcode >= 11:
            return self._fail(1002, f"reserved opcode {<int>opcode}")
        if rsv:
            if rsv & ~self._rsv_allowed:
                return self._fail(1002, "RSV bits not negotiated")
            # permessage-deflate (RFC 7692 §6): RSV1 only on the first frame of a message
            if is_control:
                return self._fail(1002, "RSV bit on a control frame")
            if opcode == OP_CONT:
                return self._fail(1002, "RSV bit on a continuation frame")
        if is_control:
            if not fin:
                return self._fail(1002, "fragmented control frame")
        elif opcode == OP_CONT:
            if not self._fragmented:
                return self._fail(1002, "continuation frame with no message to continue")
        elif self._fragmented:
            return self._fail(1002, "new data frame inside a fragmented message")
        self._fin = fin
        self._opcode = opcode
        self._collect = opcode == OP_CLOSE
        self._state = HEAD1
        return 0

    cdef inline int _second_byte(self, uint8_t byte) except -1:
        cdef bint has_mask = byte >= 0x80
        cdef uint8_t length = byte & 0x7F
        if has_mask != self._masked:
            return self._fail(1002, "frame not masked" if self._masked else "frame masked")
        if self._opcode >= OP_CLOSE:
            if length > MAX_CONTROL_PAYLOAD:
                return self._fail(1002, "control frame payload over 125 bytes")
            if length == 1 and self._opcode == OP_CLOSE:
                return self._fail(1002, "close frame with a 1-byte payload")
        self._has_mask = has_mask
        if length < 126:
            self._length = length
            return self._length_done()
        # 126: a 16-bit length follows, 127: a 64-bit one
        self._length = 0
        self._need = 2 if length == 126 else 8
        self._state = LENGTH
        return 0

    cdef inline int _length_done(self) except -1:
        if self._length >> 63:
            return self._fail(1002, "64-bit length with the top bit set")
        if self._max_frame_size and self._length > self._max_frame_size:
            return self._fail(
                1009, f"frame of {self._length} bytes over the {self._max_frame_size} byte limit"
            )
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
            self._close_frame_done()
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
        if self._close_len == 0:
            code = 1005
        else:  # _second_byte already refused a 1-byte payload
            if self._has_mask:
                wsp_mask(self._close_payload, self._close_payload, self._close_len, self._key, 0)
            code = (<unsigned int>self._close_payload[0] << 8) | self._close_payload[1]
            if not valid_close_code(code):
                return self._fail(1002, f"invalid close code {code}")
            if not wsp_utf8_valid(self._close_payload + 2, self._close_len - 2):
                return self._fail(1007, "invalid UTF-8 in the close reason")
        if self._close_code < 0:  # the first Close is the one that counts
            self._close_code = <int32_t>code
        return 0

    cdef int _fail(self, int code, str reason) except -1:
        self._error_code = code
        self._error_reason = reason
        self._state = DEAD
        raise FrameError(code, reason)
