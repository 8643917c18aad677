# cython: language_level=3
"""RelayCore: the per-read data path of the WebSocket relay, compiled twin of
``wsproxy.protocol.relay_core`` (same attributes, same hooks; see that module).

The gain over the twin: one read is one C call from the endpoint (``on_data``); the
direction's FrameTracker is fed through its C entry point on the bytes' own buffer, and the
flags and counters are C fields, so the steady state makes no Python objects and runs no
bytecode of ours. Python is entered only for the endpoint's ``write`` and the rare hooks.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

from wsproxy.errors import FrameError

__all__ = ["RelayCore"]

CLIENT = "client"
MEMBER = "member"
PEER = "peer"
LEG_CLIENT = 1
LEG_MEMBER = 2
LEG_BOTH = 3

cdef enum:
    _C = 1
    _M = 2


cdef int _feed(FrameTracker tracker, object data) except -1:
    """Feed the tracker without a copy: bytes (what transports deliver) by pointer."""
    cdef Py_buffer view
    if PyBytes_CheckExact(data):
        return tracker._consume(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return tracker._consume(<const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef class RelayCore:
    # Fields and C methods are declared in wsproxy/_ext/relay_core.pxd.

    def __init__(self, client, member, c2u=None, u2c=None):
        self.client = client
        self.member = member
        self.c2u = c2u
        self.u2c = u2c
        self.track = c2u is not None
        self.bytes_in = 0
        self.bytes_out = 0
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

    def on_data(self, ep, data):
        if ep is self.client:
            self._from_client(data)
        else:
            self._from_member(data)

    cdef _from_client(self, data):
        cdef FrameTracker tracker = self.c2u
        self.activity = True
        if tracker is not None:
            if self.c2u_broken:
                return
            try:
                _feed(tracker, data)
            except FrameError as exc:
                self._client_violation(exc, data)
                return
            if not self.client_sent_close and tracker._close_code != -1:
                self.client_sent_close = True
                self._first_close(CLIENT, tracker._close_code)
        if not self.closed_to_member and not (self.ended & _M):
            self.bytes_in += len(data)
            self.member.write(data)
            if self.client_sent_close:
                self.closed_to_member = True
        if self.client_sent_close and self.closed_to_client:
            self._shut(self.client)

    cdef _from_member(self, data):
        cdef FrameTracker tracker = self.u2c
        self.activity = True
        if self.answer is not None:
            self._member_answer(data)
            return
        if tracker is not None:
            if self.u2c_broken:
                return
            try:
                _feed(tracker, data)
            except FrameError as exc:
                self._member_violation(exc, data)
                return
            if not self.member_sent_close and tracker._close_code != -1:
                self.member_sent_close = True
                self._first_close(MEMBER, tracker._close_code)
        if not self.closed_to_client and not (self.ended & _C):
            self.bytes_out += len(data)
            self.client.write(data)
            if self.member_sent_close:
                self.closed_to_client = True
        if self.closed_to_client and (self.client_sent_close or self.c2u_broken):
            self._shut(self.client)

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
