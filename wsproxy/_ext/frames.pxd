# C interface of wsproxy._ext.frames: the compiled twin of wsproxy.protocol.frames.FrameTracker.
#
# The tracker reads one direction of a WebSocket stream, header bytes one at a time (a header
# may split anywhere), and skips payload by counting. Only a Close payload (<= 125 bytes) is
# copied, into a fixed array, to read its code. The steady state makes no Python objects:
# feed() borrows the caller's buffer and Python is touched only to raise FrameError.
#
# It lives here, not in ext/, because Cython finds a module's .pxd by its dotted name
# (wsproxy._ext.frames -> wsproxy/_ext/frames.pxd; dotted file names in ext/ are deprecated).

cimport cython
from libc.stdint cimport int32_t, uint8_t, uint64_t

cdef extern from "wsp_mask.h":
    void wsp_mask(const unsigned char *src, unsigned char *dst, size_t n,
                  const unsigned char *key, size_t phase) nogil

cdef extern from "wsp_utf8.h":
    bint wsp_utf8_valid(const unsigned char *s, size_t n) nogil


# Same states, same numbers, as the pure module's _HEAD0.._DEAD.
cdef enum ParserState:
    HEAD0 = 0      # next byte is FIN/RSV/opcode: at a frame boundary
    HEAD1 = 1      # next byte is MASK/7-bit length
    LENGTH = 2     # inside a 16- or 64-bit extended length
    MASK_KEY = 3   # inside the 4-byte mask key
    PAYLOAD = 4    # inside the payload
    DEAD = 5       # a violation was raised; every later feed raises it again


@cython.final
cdef class FrameTracker:
    cdef:
        # configuration
        bint _masked                 # frames must (True) or must not (False) be masked
        uint8_t _rsv_allowed         # negotiated RSV bits (0x40: permessage-deflate)
        uint64_t _max_frame_size     # 0 = no limit
        ParserState _state

        # the frame being read
        bint _fin
        uint8_t _opcode
        bint _has_mask
        unsigned int _need           # bytes left in the extended length or the mask key
        uint64_t _length             # payload length, possibly still being read
        uint64_t _remaining          # payload bytes not seen yet
        bint _collect                # a Close frame: keep its payload
        unsigned char _key[4]
        unsigned char _close_payload[125]
        unsigned int _close_len

        # the stream
        bint _fragmented             # a text/binary message waits for its FIN frame
        uint64_t _frames
        uint64_t _messages
        int32_t _close_code          # -1 until a complete Close; 1005 for an empty one
        uint64_t _bytes_in
        uint64_t _frame_start        # stream offset of the frame being read (or that failed)

        # the error that killed the tracker, raised again by every later feed
        int _error_code
        str _error_reason

    # feed() borrows the buffer, then _consume walks it; all "inline" methods are final.
    cdef int _consume(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef inline int _first_byte(self, uint8_t byte) except -1
    cdef inline int _second_byte(self, uint8_t byte) except -1
    cdef inline int _length_done(self) except -1
    cdef inline int _header_done(self) except -1
    cdef inline int _end_frame(self) except -1
    cdef int _close_frame_done(self) except -1
    cdef int _fail(self, int code, str reason) except -1
