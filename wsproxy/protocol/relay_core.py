"""RelayCore: the per-read data path of the WebSocket relay (pure-Python twin of
``wsproxy._ext.relay_core``).

What one read of either leg does, and nothing else: feed the direction's FrameTracker
(track mode), notice the first Close each way, forward the bytes to the other leg, count
them, and map write backpressure on one leg to a read pause on the other. Everything rare
(violations, EOF, injected Close frames, timers) is the subclass's (``proxy/relay.py``,
``WsRelay``), reached through these hooks:

    _client_violation(exc, data)   _member_violation(exc, data)   _member_answer(data)
    _first_close(side, code)       _shut(endpoint)

No asyncio here: the endpoints are any objects with ``write(data)``, ``closed`` and
``pause_reading(reason)`` / ``resume_reading(reason)``. The C twin keeps the same
attributes, so the subclass and the tests cannot tell them apart.
"""

from __future__ import annotations

from wsproxy.errors import FrameError

CLIENT = "client"
MEMBER = "member"
PEER = "peer"  # pause reason: the other leg's writes pile up
LEG_CLIENT, LEG_MEMBER, LEG_BOTH = 1, 2, 3  # bits of `ended`, `shut`, `gone`

__all__ = ["RelayCore"]


class RelayCore:
    __slots__ = (
        "client", "member", "c2u", "u2c", "track", "bytes_in", "bytes_out",
        "client_sent_close", "member_sent_close", "closed_to_client", "closed_to_member",
        "c2u_broken", "u2c_broken", "answer", "ended", "shut", "gone", "activity",
    )

    def __init__(self, client, member, c2u=None, u2c=None) -> None:
        """``c2u``/``u2c``: the FrameTrackers of each direction (track mode), or None (raw)."""
        self.client = client
        self.member = member
        self.c2u = c2u
        self.u2c = u2c
        self.track = c2u is not None
        self.bytes_in = 0  # from the client, forwarded
        self.bytes_out = 0  # to the client
        self.client_sent_close = False  # a Close frame was seen, per sender
        self.member_sent_close = False
        self.closed_to_client = False  # a Close frame was written towards each side
        self.closed_to_member = False
        self.c2u_broken = False  # a violation made the stream unreadable
        self.u2c_broken = False
        self.answer = None  # set by the subclass while the member answers a client's violation
        # Per-leg flags, as bits (LEG_CLIENT, LEG_MEMBER): ints, not sets, because an idle
        # WebSocket's memory is mostly this object.
        self.ended = 0  # legs whose peer sent EOF or was lost
        self.shut = 0  # legs we sent a FIN to
        self.gone = 0  # legs whose connection is lost
        self.activity = True  # a read happened since the idle sweeper last looked

    def on_data(self, ep, data) -> None:
        if ep is self.client:
            self._from_client(data)
        else:
            self._from_member(data)

    def _from_client(self, data) -> None:
        self.activity = True
        tracker = self.c2u
        if tracker is not None:
            if self.c2u_broken:
                return  # unreadable after a violation: nothing more is forwarded
            try:
                tracker.feed(data)
            except FrameError as exc:
                self._client_violation(exc, data)
                return
            if not self.client_sent_close and tracker.close_code != -1:
                self.client_sent_close = True
                self._first_close(CLIENT, tracker.close_code)
        if not self.closed_to_member and not self.ended & LEG_MEMBER:
            self.bytes_in += len(data)
            self.member.write(data)
            if self.client_sent_close:
                self.closed_to_member = True
        if self.client_sent_close and self.closed_to_client:
            self._shut(self.client)  # the client leg's closing handshake is complete

    def _from_member(self, data) -> None:
        self.activity = True
        if self.answer is not None:
            self._member_answer(data)
            return
        tracker = self.u2c
        if tracker is not None:
            if self.u2c_broken:
                return
            try:
                tracker.feed(data)
            except FrameError as exc:
                self._member_violation(exc, data)
                return
            if not self.member_sent_close and tracker.close_code != -1:
                self.member_sent_close = True
                self._first_close(MEMBER, tracker.close_code)
        if not self.closed_to_client and not self.ended & LEG_CLIENT:
            self.bytes_out += len(data)
            self.client.write(data)
            if self.member_sent_close:
                self.closed_to_client = True
        if self.closed_to_client and (self.client_sent_close or self.c2u_broken):
            self._shut(self.client)

    # -- flow control: a leg whose writes pile up pauses reading on the other leg ----------
    def on_pause_writing(self, ep) -> None:
        (self.member if ep is self.client else self.client).pause_reading(PEER)

    def on_resume_writing(self, ep) -> None:
        (self.member if ep is self.client else self.client).resume_reading(PEER)

    # -- hooks (the subclass's) ---------------------------------------------------------
    def _client_violation(self, exc: FrameError, data) -> None:
        raise NotImplementedError

    def _member_violation(self, exc: FrameError, data) -> None:
        raise NotImplementedError

    def _member_answer(self, data) -> None:
        raise NotImplementedError

    def _first_close(self, side: str, code, reason: str | None = None) -> None:
        raise NotImplementedError

    def _shut(self, ep) -> None:
        raise NotImplementedError
