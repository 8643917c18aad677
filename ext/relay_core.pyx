# cython: language_level=3
"""RelayCore and RelayLeg: the per-read data path of the WebSocket relay, compiled twin of
``wsproxy.protocol.relay_core`` (same attributes, same hooks; see that module).

After the 101, ``RelayCore.attach`` makes each transport's protocol a ``RelayLeg`` (a
BufferedProtocol). A read is then:

- ``get_buffer``: this thread's read buffer (one per event-loop thread, so one per worker
  process; an idle connection holds none), a C object exposing the buffer protocol;
- ``buffer_updated(n)``: one C call. The direction's C FrameTracker is fed on the buffer's
  pointer, the flags and counters are C fields, and the bytes are forwarded with
  ``send(fd, ptr, n, MSG_DONTWAIT | MSG_NOSIGNAL)`` straight to the destination's socket
  when its transport holds no unsent bytes and is plain TCP (no TLS). What the socket does
  not take (a partial write, EAGAIN) goes to ``transport.write`` as a bytes *copy*.

So the steady state creates no Python object and runs no bytecode of ours, and no transport
ever holds a view of the read buffer (uvloop, and asyncio from 3.12, keep a view of the
unsent part of what they are given): the buffer can be reused by the next read of any
connection. Should anything ever keep a view anyway, ``get_buffer`` notices (the buffer
counts its exports) and replaces the buffer, leaving the old one to whoever holds it.

"The transport holds no unsent bytes" is a C flag, ``pending``: the transports' write limits
are set to high=0, low=0, so ``pause_writing`` fires as soon as a transport buffers anything
and ``resume_writing`` when it has drained; the same two events pause and resume reading on
the other leg (backpressure). Bytes written through ``transport.write`` (injected Close
frames, the partial-write remainder) therefore always precede any later direct send.

``send`` errors other than EAGAIN/EINTR: the bytes go to ``transport.write`` like a partial
write, and the leg stops sending directly; the transport meets the same error on its own
write and reports it through ``connection_lost(exc)``, as it did before direct sends.

Keep-alive routes (``enable_keepalive``; the pure twin's docstring says what it does) take
another path per read, ``_relay_ka``; other routes pay one pointer test (``ka is not None``).
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_SIMPLE, PyBUF_STRIDES, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t
from libc.stdlib cimport free
from libc.string cimport memcpy
from posix.stdlib cimport posix_memalign

from wsproxy._ext.frames cimport HEAD0  # FrameTracker._state at a frame boundary

from wsproxy.errors import FrameError

__all__ = ["RelayCore"]

CLIENT = "client"
MEMBER = "member"
PEER = "peer"
LEG_CLIENT = 1
LEG_MEMBER = 2
LEG_BOTH = 3
READ_BUFFER_SIZE = 256 * 1024  # one read; 64 KiB cost ~30% more CPU per GB relayed (more reads and sends)

cdef enum:
    _C = 1
    _M = 2
    _OP_PONG = 10

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    #define WSP_SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)
    #define WSP_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
    /* This thread's read buffer: a strong reference to a _ReadBuffer (or NULL), and its
       memory. Per thread because the loop reads into it without the GIL; one per worker
       process in practice (never freed: a thread that relayed once keeps it). */
    static __thread PyObject *wsp_read_buffer = NULL;
    static __thread char *wsp_read_data = NULL;
    static __thread Py_ssize_t wsp_read_size = 0;
    """
    ssize_t send(int fd, const void *buf, size_t n, int flags) nogil
    enum:
        WSP_SEND_FLAGS
    bint WSP_WOULD_BLOCK(int e) nogil
    PyObject *wsp_read_buffer
    char *wsp_read_data
    Py_ssize_t wsp_read_size


# FrameTracker._consume called without Cython's check of its result: -1 means it raised and
# the exception is set, which _violation() then handles. The steady state of a read thus
# sets up no try block (saving and restoring the thread's exception state each time).
ctypedef int (*_consume_t)(FrameTracker, const uint8_t *, Py_ssize_t) noexcept
cdef _consume_t _consume = <_consume_t>FrameTracker._consume
# The same for the keep-alive path's _consume_to (feed_to_frame): -1 means it raised.
ctypedef Py_ssize_t (*_consume_to_t)(FrameTracker, const uint8_t *, Py_ssize_t, bint) noexcept
cdef _consume_to_t _consume_to = <_consume_to_t>FrameTracker._consume_to


cdef int _raise_pending() except -1:
    return -1  # the exception is already set


@cython.final
cdef class _ReadBuffer:
    """Writable memory exposed through the buffer protocol, counting the views held on it."""

    cdef char *data
    cdef Py_ssize_t size
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t exports

    def __cinit__(self, Py_ssize_t size):
        cdef void *mem = NULL
        # Page-aligned: the kernel's copy into a destination that is not 64-byte aligned can
        # be slower (it was, measured here), and malloc's large blocks are not aligned.
        if posix_memalign(&mem, 4096, <size_t>size) != 0:
            raise MemoryError()
        self.data = <char *>mem
        self.size = size
        self.itemsize = 1

    def __dealloc__(self):
        free(self.data)

    def __len__(self):
        return self.size  # asyncio checks it before reading into the buffer

    def __getitem__(self, key):
        # asyncio's SSL protocol reads into a slice of the buffer it got (buf[offset:]);
        # a memoryview slice is the same memory (the pure twin's bytearray slices too).
        return memoryview(self)[key]

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = self.data
        view.obj = self
        view.len = self.size
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = NULL
        if flags & PyBUF_ND:
            view.shape = &self.size
        view.strides = NULL
        if (flags & PyBUF_STRIDES) == PyBUF_STRIDES:
            view.strides = &self.itemsize
        view.suboffsets = NULL
        view.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1


cdef object _read_buffer():
    """This thread's read buffer: a new one if none yet, or if a view of it is still held."""
    global wsp_read_buffer, wsp_read_data, wsp_read_size
    cdef _ReadBuffer buf
    if wsp_read_buffer != NULL:
        buf = <_ReadBuffer>wsp_read_buffer
        if buf.exports == 0:
            return buf
    buf = _ReadBuffer(READ_BUFFER_SIZE)
    Py_INCREF(buf)
    Py_XDECREF(wsp_read_buffer)  # a held old buffer lives on until its last view is released
    wsp_read_buffer = <PyObject *>buf
    wsp_read_data = buf.data
    wsp_read_size = buf.size
    return buf


cdef class RelayLeg:
    # The docstring's first lines are the signature in CPython's own format (inspect reads it).
    """RelayLeg(relay, ep, is_client)
--

The protocol of one transport of a relay after the 101 (see the module docstring).
Events other than reads go to the Endpoint (eof, lost) or to the relay (flow control)."""

    # Fields are declared in wsproxy/_ext/relay_core.pxd.

    def __init__(self, RelayCore relay, ep, bint is_client):
        self.relay = relay
        self.ep = ep
        self.is_client = is_client
        self.fd = -1
        self.pending = False

    # -- asyncio.BufferedProtocol ----------------------------------------------------------
    def connection_made(self, transport):
        pass  # set_protocol() does not call it; the Endpoint already has the transport

    def get_buffer(self, Py_ssize_t sizehint):
        return _read_buffer()

    def buffer_updated(self, Py_ssize_t nbytes):
        if nbytes < 0 or nbytes > wsp_read_size:
            raise ValueError("buffer_updated(%d) outside the read buffer" % nbytes)
        if self.is_client:
            self.relay._from_client(<const uint8_t *>wsp_read_data, nbytes)
        else:
            self.relay._from_member(<const uint8_t *>wsp_read_data, nbytes)

    def data_received(self, data):
        """A transport that does not read into buffers (none of ours today) still works."""
        _dispatch(self.relay, self.is_client, data)

    def eof_received(self):
        return self.ep.eof_received()

    def connection_lost(self, exc):
        self.fd = -1  # the transport closes the socket when this returns
        self.pending = False
        self.ep.connection_lost(exc)

    def pause_writing(self):
        self.pending = True
        self.relay.on_pause_writing(self.ep)

    def resume_writing(self):
        self.pending = False
        self.relay.on_resume_writing(self.ep)


cdef int _dispatch(RelayCore relay, bint from_client, object data) except -1:
    """Relay a bytes-like object: bytes (what transports deliver) by pointer, else a view."""
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        # _forward writes this very object when all of it goes to the transport: no copy
        # (inspect mode hands each frame's own bytes here).
        relay._whole = data
        try:
            if from_client:
                return relay._from_client(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return relay._from_member(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        finally:
            relay._whole = None
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if from_client:
            return relay._from_client(<const uint8_t *>view.buf, view.len)
        return relay._from_member(<const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef inline int _pong_size(const unsigned char *head) noexcept:
    # A Pong's wire size from its first two bytes (the tracker checked them: length <= 125).
    return 2 + (4 if head[1] & 0x80 else 0) + (head[1] & 0x7F)


@cython.final
cdef class KeepAlive:
    """KeepAlive(token)
--

A keep-alive route's state of one relay (see the pure twin, wsproxy.protocol.relay_core)."""

    # Fields are declared in wsproxy/_ext/relay_core.pxd.

    def __init__(self, bytes token):
        if not 0 < len(token) <= 125:
            raise ValueError("a ping token is 1 to 125 bytes")
        self.token = token

    @property
    def holding(self):
        """Leg bits: a Pong from the leg is partly read and held back (the stream it travels
        on has forwarded nothing of it, so it is at a frame boundary)."""
        return (_C if self._hold_len[0] else 0) | (_M if self._hold_len[1] else 0)

    cdef bint _ours(self, const unsigned char *frame, int size) noexcept:
        # frame: a whole Pong as it came (header, mask key if masked, payload)
        cdef const unsigned char *token = <const unsigned char *>PyBytes_AS_STRING(self.token)
        cdef bint masked = frame[1] & 0x80
        cdef int length = frame[1] & 0x7F
        cdef const unsigned char *payload = frame + (6 if masked else 2)
        cdef int i
        if length != PyBytes_GET_SIZE(self.token):
            return False
        for i in range(length):
            if (payload[i] ^ (frame[2 + (i & 3)] if masked else 0)) != token[i]:
                return False
        return True


cdef class RelayCore:
    # Fields and C methods are declared in wsproxy/_ext/relay_core.pxd.

    Leg = RelayLeg  # what attach() makes; WsRelay uses a subclass that is an asyncio.BufferedProtocol

    def __init__(self, client, member, c2u=None, u2c=None):
        self.client = client
        self.member = member
        self.c2u = c2u
        self.u2c = u2c
        self.track = c2u is not None
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_at_reply = 0
        self.frames_at_reply = 0
        self.client_sent_close = False
        self.member_sent_close = False
        self.closed_to_client = False
        self.closed_to_member = False
        self.c2u_broken = False
        self.u2c_broken = False
        self.answer = None
        self.ended = 0
        self.shut = 0
        self.gone = 0
        self.activity = True
        self.client_leg = None
        self.member_leg = None
        self._whole = None
        self.ka = None

    def enable_keepalive(self, token):
        """Absorb the Pongs carrying ``token`` both ways and offer Pings to ``_inject_ping``
        at frame boundaries (track mode only); returns the KeepAlive state (``ka``)."""
        if self.c2u is None:
            raise ValueError("keep-alive needs frame tracking (track or inspect relay)")
        if self.ka is None:
            self.ka = KeepAlive(token)
        return self.ka

    def attach(self):
        """Become both transports' protocol (a RelayLeg each); see the module docstring."""
        if self.client_leg is None:
            self.client_leg = self._attach(self.client, True)
            self.member_leg = self._attach(self.member, False)

    cdef RelayLeg _attach(self, object ep, bint is_client):
        cdef RelayLeg leg = self.Leg(self, ep, is_client)
        transport = ep.transport
        if ep.closed or transport is None or transport.is_closing():
            return leg  # its events still reach the Endpoint; nothing goes direct
        transport.set_protocol(leg)
        plain = transport.get_extra_info("sslcontext") is None
        # "Pause while anything is buffered" (may call leg.pause_writing() right away). A TLS
        # transport pauses at the high-water mark, a plain one above it: (0, 0) would pause
        # a TLS one for good after a write, so it gets (1, 0).
        transport.set_write_buffer_limits(0 if plain else 1, 0)
        if transport.get_write_buffer_size() and not leg.pending:
            leg.pause_writing()  # it was paused under the old limits and has not drained
        if plain:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                leg.fd = sock.fileno()
        return leg

    def on_data(self, ep, data):
        _dispatch(self, ep is self.client, data)

    cdef int _from_client(self, const uint8_t *data, Py_ssize_t size) except -1:
        cdef FrameTracker tracker = self.c2u
        self.activity = True
        if tracker is not None:
            if self.c2u_broken:
                return 0
            if self.ka is not None:
                return self._relay_ka(True, data, size)
            if _consume(tracker, data, size) == -1:
                return self._violation(True, data, size)
            if not self.client_sent_close and tracker._close_code != -1:
                self.client_sent_close = True
                self._first_close(CLIENT, tracker._close_code)
        if not self.closed_to_member and not (self.ended & _M):
            self.bytes_in += size
            self._forward(self.member_leg, self.member, data, size)
            if self.client_sent_close:
                self.closed_to_member = True
        if self.client_sent_close and self.closed_to_client:
            self._shut(self.client)
        return 0

    cdef int _from_member(self, const uint8_t *data, Py_ssize_t size) except -1:
        cdef FrameTracker tracker = self.u2c
        self.activity = True
        self.in_at_reply = self.bytes_in
        if self.c2u is not None:
            self.frames_at_reply = self.c2u._frames
        if self.answer is not None:
            self._member_answer(PyBytes_FromStringAndSize(<const char *>data, size))
            return 0
        if tracker is not None:
            if self.u2c_broken:
                return 0
            if self.ka is not None:
                return self._relay_ka(False, data, size)
            if _consume(tracker, data, size) == -1:
                return self._violation(False, data, size)
            if not self.member_sent_close and tracker._close_code != -1:
                self.member_sent_close = True
                self._first_close(MEMBER, tracker._close_code)
        if not self.closed_to_client and not (self.ended & _C):
            self.bytes_out += size
            self._forward(self.client_leg, self.client, data, size)
            if self.member_sent_close:
                self.closed_to_client = True
        if self.closed_to_client and (self.client_sent_close or self.c2u_broken):
            self._shut(self.client)
        return 0

    # -- the keep-alive path ---------------------------------------------------------------
    cdef int _relay_ka(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -1:
        """A read on a keep-alive route: forwarded in pieces that end where a Pong begins
        (held back, then absorbed if ours) or, while a Ping is owed to the destination,
        where any frame begins (the Ping goes there)."""
        cdef KeepAlive ka = self.ka
        cdef FrameTracker tracker = self.c2u if from_client else self.u2c
        cdef int side = 0 if from_client else 1  # index of this stream's hold
        cdef int to_leg = _M if from_client else _C  # where this stream goes: its Pings ride it
        cdef Py_ssize_t n
        ka.heard |= _C if from_client else _M
        while size > 0:
            if ka._hold_len[side] == 0:
                if ka.want & to_leg and tracker._state == HEAD0:
                    self._ping_now(to_leg)
                n = _consume_to(tracker, data, size, not (ka.want & to_leg))
                if n == -1:
                    return self._violation(from_client, data, size)
                if n:
                    self._pass(from_client, data, n)
                    data += n
                    size -= n
                if size == 0 or (data[0] & 0x0F) != _OP_PONG:
                    continue  # all read, or a frame begins where the owed Ping goes
            n = self._hold_pong(from_client, data, size)
            if n < 0:
                return 0  # a violation inside the Pong (handled)
            data += n
            size -= n
        if ka.want & to_leg and (tracker._state == HEAD0 or ka._hold_len[side]):
            self._ping_now(to_leg)
        if from_client:
            if self.client_sent_close and self.closed_to_client:
                self._shut(self.client)
        elif self.closed_to_client and (self.client_sent_close or self.c2u_broken):
            self._shut(self.client)
        return 0

    cdef int _pass(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -1:
        """What the plain path does with a read, for a piece of one the tracker has read."""
        cdef FrameTracker tracker
        if from_client:
            tracker = self.c2u
            if not self.client_sent_close and tracker._close_code != -1:
                self.client_sent_close = True
                self._first_close(CLIENT, tracker._close_code)
            if not self.closed_to_member and not (self.ended & _M):
                self.bytes_in += size
                self._forward(self.member_leg, self.member, data, size)
                if self.client_sent_close:
                    self.closed_to_member = True
        else:
            tracker = self.u2c
            if not self.member_sent_close and tracker._close_code != -1:
                self.member_sent_close = True
                self._first_close(MEMBER, tracker._close_code)
            if not self.closed_to_client and not (self.ended & _C):
                self.bytes_out += size
                self._forward(self.client_leg, self.client, data, size)
                if self.member_sent_close:
                    self.closed_to_client = True
        return 0

    cdef Py_ssize_t _hold_pong(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -2:
        """Take the bytes of the Pong being read (at most its end) into the hold; once it is
        whole, absorb it if it carries our token, else forward it. Returns the bytes taken,
        -1 after a violation (handled: the hook gets the held bytes, so nothing is valid
        before the bad frame and the far side is at a frame boundary)."""
        cdef KeepAlive ka = self.ka
        cdef FrameTracker tracker = self.c2u if from_client else self.u2c
        cdef int side = 0 if from_client else 1
        cdef unsigned char *hold = ka._hold[side]
        cdef int held = ka._hold_len[side]
        cdef Py_ssize_t used = 0
        cdef Py_ssize_t need
        while used < size:
            need = (2 - held) if held < 2 else (_pong_size(hold) - held)
            if need == 0:
                break
            if need > size - used:
                need = size - used
            memcpy(hold + held, data + used, <size_t>need)
            held += <int>need
            if _consume(tracker, data + used, need) == -1:
                ka._hold_len[side] = 0
                self._violation(from_client, hold, held)
                return -1
            used += need
        if held >= 2 and held == _pong_size(hold):
            ka._hold_len[side] = 0
            if ka._ours(hold, held):
                ka.answered |= _C if from_client else _M
            else:
                self._pass(from_client, hold, held)
        else:
            ka._hold_len[side] = held
        return used

    cdef int _ping_now(self, int to_leg) except -1:
        self.ka.want &= ~to_leg
        self._inject_ping(CLIENT if to_leg == _C else MEMBER)
        return 0

    cdef int _violation(self, bint client, const uint8_t *data, Py_ssize_t size) except -1:
        """The tracker raised (the exception is set): a FrameError goes to the hook with a
        copy of the read, anything else propagates."""
        try:
            _raise_pending()
        except FrameError as exc:
            data_copy = PyBytes_FromStringAndSize(<const char *>data, size)
            if client:
                self._client_violation(exc, data_copy)
            else:
                self._member_violation(exc, data_copy)
        return 0

    cdef int _forward(self, RelayLeg leg, object ep, const uint8_t *data, Py_ssize_t size) except -1:
        """Send straight to the socket when the transport holds nothing; the rest, copied,
        through the Endpoint (which drops it once the connection is closed)."""
        cdef ssize_t sent
        if size <= 0:
            return 0
        if leg is not None and leg.fd >= 0 and not leg.pending:
            sent = send(leg.fd, data, <size_t>size, WSP_SEND_FLAGS)
            while sent < 0 and errno == EINTR:
                sent = send(leg.fd, data, <size_t>size, WSP_SEND_FLAGS)
            if sent == size:
                return 0
            if sent < 0:
                if not WSP_WOULD_BLOCK(errno):
                    leg.fd = -1  # the transport's own write meets the error and reports it
                sent = 0
            data += sent
            size -= sent
        whole = self._whole
        if (whole is not None and <const char *>data == PyBytes_AS_STRING(whole)
                and size == PyBytes_GET_SIZE(whole)):
            ep.write(whole)  # the caller's own bytes, whole: immutable, so no copy is needed
        else:
            ep.write(PyBytes_FromStringAndSize(<const char *>data, size))
        return 0

    def on_pause_writing(self, ep):
        (self.member if ep is self.client else self.client).pause_reading(PEER)

    def on_resume_writing(self, ep):
        (self.member if ep is self.client else self.client).resume_reading(PEER)

    # Hooks: the subclass (proxy/relay.py, WsRelay) defines them.
    def _client_violation(self, exc, data):
        raise NotImplementedError

    def _member_violation(self, exc, data):
        raise NotImplementedError

    def _member_answer(self, data):
        raise NotImplementedError

    def _first_close(self, side, code, reason=None):
        raise NotImplementedError

    def _shut(self, ep):
        raise NotImplementedError

    def _inject_ping(self, side):
        raise NotImplementedError
