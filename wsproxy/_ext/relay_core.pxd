# C interface of wsproxy._ext.relay_core: the compiled twin of wsproxy.protocol.relay_core.
#
# After the 101 each transport's protocol is a RelayLeg (a BufferedProtocol): the transport
# reads into this thread's read buffer and calls buffer_updated(n), which is one C call that
# feeds the direction's C FrameTracker on the buffer and forwards the bytes: by send(2) on
# the destination's socket when its transport holds nothing, else as a bytes copy through
# transport.write. RelayCore holds the relay's per-connection state (C fields, readable and
# writable from Python by the same names); RelayLeg holds what one transport needs.

cimport cython
from libc.stdint cimport uint8_t

from wsproxy._ext.frames cimport FrameTracker


cdef class RelayCore


cdef class RelayLeg:
    cdef readonly RelayCore relay
    cdef readonly object ep          # the Endpoint: writes that cannot go direct, eof, lost
    cdef readonly int fd             # socket for direct sends; -1: never (TLS, not attached, lost)
    cdef readonly bint is_client
    cdef readonly bint pending       # the transport holds unsent bytes (pause_writing..resume_writing)


# A keep-alive route's per-relay state (RelayCore.ka; None elsewhere, so other routes pay one
# pointer test per read). Index 0 of the hold arrays is the client->member stream, 1 the other.
@cython.final
cdef class KeepAlive:
    cdef readonly bytes token        # the payload of our Pings: Pongs carrying it are absorbed
    cdef public int heard            # leg bits: bytes came from the leg since the sweeper cleared it
    cdef public int answered         # leg bits: the leg's Pong to our Ping came back (absorbed)
    cdef public int want             # leg bits: a Ping is owed to the leg at the next frame boundary
    # The sweeper's (proxy/keepalive.py): loop-time seconds; a deadline of 0 = no Ping outstanding.
    cdef public double interval, timeout, due_client, due_member, deadline_client, deadline_member
    cdef unsigned char _hold[2][131]  # a Pong being read, held back until we know whose it is
    cdef int _hold_len[2]

    cdef bint _ours(self, const unsigned char *frame, int size) noexcept


cdef class RelayCore:
    cdef public object client, member, answer
    cdef public FrameTracker c2u, u2c
    cdef public bint track, client_sent_close, member_sent_close, closed_to_client, closed_to_member
    cdef public bint c2u_broken, u2c_broken, activity
    cdef public long long bytes_in, bytes_out
    # bytes_in and c2u's frame count when the member last sent something: what went to the
    # member after that is unanswered (reported when the member is lost mid-stream)
    cdef public long long in_at_reply, frames_at_reply
    cdef public int ended, shut, gone
    cdef readonly RelayLeg client_leg, member_leg
    cdef object _whole               # the bytes object a non-leg read came in (on_data), else None
    cdef readonly KeepAlive ka       # keep-alive routes only (enable_keepalive), else None

    cdef int _from_client(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _from_member(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _violation(self, bint client, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _forward(self, RelayLeg leg, object ep, const uint8_t *data, Py_ssize_t size) except -1
    cdef RelayLeg _attach(self, object ep, bint is_client)
    # the keep-alive path (ka is not None): Pongs cut out, Pings let in at frame boundaries
    cdef int _relay_ka(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _pass(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -1
    cdef Py_ssize_t _hold_pong(self, bint from_client, const uint8_t *data, Py_ssize_t size) except -2
    cdef int _ping_now(self, int to_leg) except -1
