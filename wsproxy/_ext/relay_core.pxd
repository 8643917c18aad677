# C interface of wsproxy._ext.relay_core: the compiled twin of wsproxy.protocol.relay_core.
# One read of either leg of a WebSocket relay is one call to on_data, which feeds the C
# FrameTracker on the bytes' own buffer and forwards them; the fields below are the relay's
# per-connection state (C fields, readable and writable from Python by the same names).

from wsproxy._ext.frames cimport FrameTracker


cdef class RelayCore:
    cdef public object client, member, answer
    cdef public FrameTracker c2u, u2c
    cdef public bint track, client_sent_close, member_sent_close, closed_to_client, closed_to_member
    cdef public bint c2u_broken, u2c_broken, activity
    cdef public long long bytes_in, bytes_out
    cdef public int ended, shut, gone

    cdef _from_client(self, data)
    cdef _from_member(self, data)
