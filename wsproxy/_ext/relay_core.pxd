# C interface of wsproxy._ext.relay_core: the compiled twin of wsproxy.protocol.relay_core.
#
# After the 101 each transport's protocol is a RelayLeg (a BufferedProtocol): the transport
# reads into this thread's read buffer and calls buffer_updated(n), which is one C call that
# feeds the direction's C FrameTracker on the buffer and forwards the bytes: by send(2) on
# the destination's socket when its transport holds nothing, else as a bytes copy through
# transport.write. RelayCore holds the relay's per-connection state (C fields, readable and
# writable from Python by the same names); RelayLeg holds what one transport needs.

from libc.stdint cimport uint8_t

from wsproxy._ext.frames cimport FrameTracker


cdef class RelayCore


cdef class RelayLeg:
    cdef readonly RelayCore relay
    cdef readonly object ep          # the Endpoint: writes that cannot go direct, eof, lost
    cdef readonly int fd             # socket for direct sends; -1: never (TLS, not attached, lost)
    cdef readonly bint is_client
    cdef readonly bint pending       # the transport holds unsent bytes (pause_writing..resume_writing)


cdef class RelayCore:
    cdef public object client, member, answer
    cdef public FrameTracker c2u, u2c
    cdef public bint track, client_sent_close, member_sent_close, closed_to_client, closed_to_member
    cdef public bint c2u_broken, u2c_broken, activity
    cdef public long long bytes_in, bytes_out
    cdef public int ended, shut, gone
    cdef readonly RelayLeg client_leg, member_leg
    cdef object _whole               # the bytes object a non-leg read came in (on_data), else None

    cdef int _from_client(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _from_member(self, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _violation(self, bint client, const uint8_t *data, Py_ssize_t size) except -1
    cdef int _forward(self, RelayLeg leg, object ep, const uint8_t *data, Py_ssize_t size) except -1
    cdef RelayLeg _attach(self, object ep, bint is_client)
