# C interface of wsproxy._ext.frames: the compiled twin of wsproxy.protocol.frames.
#
# FrameTracker reads one direction of a WebSocket stream, header bytes one at a time (a header
# may split anywhere), and skips payload by counting. Only a Close payload (<= 125 bytes) is
# copied, into a fixed array, to read its code; with validate_utf8, a text message's payload is
# also read (unmasked into a stack buffer) by the streaming UTF-8 check. The steady state makes no Python objects:
# feed() borrows the caller's buffer and Python is touched only to raise FrameError.
# relay_core cimports it and calls _consume through its vtable, so its fields and methods below
# keep their order (an old relay_core module must still match a new frames module).
#
# FrameReader runs the same header rules (module-level checks in frames.pyx), keeps each frame's
# wire bytes and makes one Frame per frame; MessageAssembler joins Frames into Messages.
#
# It lives here, not in ext/, because Cython finds a module's .pxd by its dotted name
# (wsproxy._ext.frames -> wsproxy/_ext/frames.pxd; dotted file names in ext/ are deprecated).

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint64_t

cdef extern from "wsp_mask.h":
    void wsp_mask(const unsigned char *src, unsigned char *dst, size_t n,
                  const unsigned char *key, size_t phase) nogil

cdef extern from "wsp_utf8.h":
    bint wsp_utf8_valid(const unsigned char *s, size_t n) nogil

cdef extern from "wsp_utf8_stream.h":
    ctypedef struct wsp_utf8_stream:
        unsigned char len        # bytes of an unfinished character carried to the next fragment
    bint wsp_utf8_stream_feed(wsp_utf8_stream *st, const unsigned char *s, size_t n) nogil


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

        # The data message being read: its size against max_message_size, its UTF-8 with
        # validate_utf8 (last, so the fields above keep their offsets).
        uint64_t _max_message_size   # 0 = no limit
        uint64_t _message_size       # its payload bytes so far (counted with a limit only)
        bint _validate_utf8
        bint _check_utf8             # it is uncompressed text, and validate_utf8 is on
        wsp_utf8_stream _utf8        # an unfinished character at the end of its payload so far

    # feed() borrows the buffer, then _consume walks it; all "inline" methods are final.
    cdef int _consume(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef inline int _first_byte(self, uint8_t byte) except -1
    cdef inline int _second_byte(self, uint8_t byte) except -1
    cdef inline int _length_done(self) except -1
    cdef inline int _header_done(self) except -1
    cdef inline int _end_frame(self) except -1
    cdef int _close_frame_done(self) except -1
    cdef int _fail(self, int code, str reason) except -1
    # feed_to_frame(): _consume that stops where a frame (a Pong) begins. Last, so the methods
    # above keep their vtable slots.
    cdef Py_ssize_t _consume_to(self, const uint8_t *data, Py_ssize_t size, bint pong_only) except -1
    # The message limits' rare paths (max_message_size, validate_utf8), out of line: a
    # track-mode read pays a test or two per frame for them, none per byte without validate_utf8.
    cdef int _message_too_big(self, uint64_t size) except -1
    cdef int _payload_seen(self, const uint8_t *data, uint64_t size) except -1
    cdef int _text_frame_done(self) except -1


@cython.final
@cython.freelist(64)
cdef class Frame:
    cdef readonly bint fin
    cdef readonly int opcode
    cdef readonly bytes payload      # unmasked
    cdef readonly int rsv
    cdef readonly bytes raw          # the wire bytes: header + still-masked payload (b"" if built)


@cython.final
cdef class FrameReader:
    cdef:
        # configuration
        int _mask_rule               # 1: every frame masked, 0: none, MASK_EITHER: both
        uint8_t _rsv_allowed
        uint64_t _max_frame_size     # 0 = no limit
        ParserState _state

        # the frame being read
        bint _fin
        uint8_t _opcode
        uint8_t _rsv
        bint _has_mask
        unsigned int _need           # bytes left in the extended length or the mask key
        uint64_t _length             # payload length, possibly still being read
        uint64_t _remaining          # payload bytes not seen yet
        unsigned char _head[14]      # the header as read: 2 + up to 8 of length + 4 of mask key
        unsigned int _head_len
        # A frame that spans feeds: its bytes so far, in an owned bytes object (or NULL) grown
        # up to exactly the frame's size, which then becomes the Frame's raw without a copy.
        PyObject *_spill
        Py_ssize_t _spill_len
        Py_ssize_t _spill_capacity

        # the stream
        bint _fragmented
        uint64_t _frames
        uint64_t _messages
        int32_t _close_code
        uint64_t _bytes_in
        uint64_t _frame_start
        list _completed              # the frames of the current (or last) feed

        int _error_code
        str _error_reason

    cdef int _consume(self, object chunk, const uint8_t *data, Py_ssize_t size) except -1
    cdef inline int _first_byte(self, uint8_t byte) except -1
    cdef inline int _second_byte(self, uint8_t byte) except -1
    cdef inline int _length_done(self) except -1
    cdef int _end_frame(self, object chunk, const uint8_t *data, Py_ssize_t start,
                        Py_ssize_t end) except -1
    cdef int _spill_frame(self, const uint8_t *data, Py_ssize_t end) except -1
    cdef int _spill_append(self, const void *src, Py_ssize_t size) except -1
    cdef int _fail(self, int code, str reason) except -1


@cython.final
@cython.freelist(16)
cdef class Message:
    cdef readonly int opcode
    cdef readonly bytes payload
    cdef readonly int rsv
    cdef readonly bytes raw          # the frames' wire bytes, joined (b"" if one had none)
    cdef readonly Py_ssize_t frames


@cython.final
cdef class MessageAssembler:
    cdef:
        uint64_t _max_size           # 0 = no limit
        bint _validate_utf8
        # the message being assembled
        int _opcode                  # 0 when none is
        int _rsv
        uint64_t _size
        Py_ssize_t _frames
        bint _check_utf8             # text, validate_utf8, not compressed
        wsp_utf8_stream _utf8
        list _payloads               # from its second frame on (None before)
        list _raws
        bint _raws_complete          # every frame so far had its wire bytes
        # the stream
        uint64_t _messages
        list _completed
        int _error_code
        str _error_reason            # None until a violation

    cdef int _add(self, object item, bint fin, int opcode, bytes payload, int rsv,
                  bytes raw) except -1
    cdef int _fail(self, int code, str reason) except -1
