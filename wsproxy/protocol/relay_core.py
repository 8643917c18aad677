"""RelayCore and RelayLeg: the per-read data path of the WebSocket relay (pure-Python twin
of ``wsproxy._ext.relay_core``).

What one read of either leg does, and nothing else: feed the direction's FrameTracker
(track mode), notice the first Close each way, forward the bytes to the other leg, count
them, and map write backpressure on one leg to a read pause on the other. Everything rare
(violations, EOF, injected Close frames, timers) is the subclass's (``proxy/relay.py``,
``WsRelay``), reached through these hooks:

    _client_violation(exc, data)   _member_violation(exc, data)   _member_answer(data)
    _first_close(side, code)       _shut(endpoint)                _inject_ping(side)

``attach()`` (after the 101) makes each transport's protocol a ``RelayLeg``, a
BufferedProtocol: the transport reads into a read buffer shared by every connection of the
thread (an idle connection holds none) and calls ``buffer_updated(n)``. The transports' write
limits become high=0, low=0, so ``pause_writing`` means "this transport holds unsent bytes"
(the leg's ``pending`` flag) and ``resume_writing`` "it has drained"; they pause and resume
reading on the other leg. The compiled twin forwards a read with ``send(2)`` straight to the
destination's socket while its transport holds nothing; this twin always copies the read
(``bytes``) and writes the copy through the Endpoint, so its ``fd`` stays -1. Either way no
transport is ever given a view of the read buffer (uvloop, and asyncio from 3.12, keep a
view of what they could not send at once), so the next read may reuse it.

No asyncio here: the endpoints are any objects with ``write(data)``, ``closed``,
``transport`` and ``pause_reading(reason)`` / ``resume_reading(reason)``, and a transport is
anything with asyncio's transport methods. The C twin keeps the same attributes, so the
subclass and the tests cannot tell them apart. ``RelayCore.Leg`` is the class ``attach()``
instantiates; ``WsRelay`` sets a subclass that is also an ``asyncio.BufferedProtocol`` (asyncio
checks that type to choose buffered reads; uvloop looks for ``get_buffer``).

Keep-alive (``enable_keepalive(token)``, track mode only). The proxy's own Pings carry
``token``; the Pongs that carry it back are the proxy's, so they must not reach the other
side. With ``ka`` set, a read is forwarded in pieces (``_relay_ka``): the tracker stops where
a Pong begins (``FrameTracker.feed_to_frame``), the bytes before it go on as usual, and the
Pong (at most 131 bytes, possibly split across reads) is held back until it is whole. Ours
is dropped and noted (``ka.answered``); any other goes on unchanged, so an application's own
ping/pong is untouched. A Ping owed to a leg (``ka.want``, set by the sweeper when that leg's
stream was inside a frame) goes out through the ``_inject_ping`` hook as soon as that stream
reaches a frame boundary: the tracker then stops before any frame, not only Pongs. Control
frames may sit between the fragments of a message, never inside a frame. Every read sets
``ka.heard`` for its leg. Routes without keep-alive (``ka`` None) pay one test per read.
"""

from __future__ import annotations

import threading

from wsproxy.errors import FrameError

CLIENT = "client"
MEMBER = "member"
PEER = "peer"  # pause reason: the other leg's writes pile up
LEG_CLIENT, LEG_MEMBER, LEG_BOTH = 1, 2, 3  # bits of `ended`, `shut`, `gone`
READ_BUFFER_SIZE = 256 * 1024  # one read

__all__ = ["RelayCore", "RelayLeg", "READ_BUFFER_SIZE"]

OP_PONG = 10

# This thread's read buffer (per thread, because the loop reads into it without the GIL).
_local = threading.local()


def _read_buffer() -> bytearray:
    buf = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = bytearray(READ_BUFFER_SIZE)
        _local.view = memoryview(buf)
    return buf


class RelayLeg:
    """The protocol of one transport of a relay after the 101. Reads go to the relay;
    eof and connection_lost to the Endpoint; pause/resume_writing to the relay."""

    __slots__ = ("relay", "ep", "fd", "is_client", "pending")

    def __init__(self, relay, ep, is_client: bool) -> None:
        self.relay = relay
        self.ep = ep
        self.is_client = is_client
        self.fd = -1  # socket for direct sends; this twin never sends directly
        self.pending = False  # the transport holds unsent bytes (pause_writing..resume_writing)

    # -- asyncio.BufferedProtocol ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        pass  # set_protocol() does not call it; the Endpoint already has the transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return _read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if not 0 <= nbytes <= READ_BUFFER_SIZE:
            raise ValueError("buffer_updated(%d) outside the read buffer" % nbytes)
        data = bytes(_local.view[:nbytes])  # a copy: the buffer is reused by the next read
        if self.is_client:
            self.relay._from_client(data)
        else:
            self.relay._from_member(data)

    def data_received(self, data) -> None:
        """A transport that does not read into buffers (none of ours today) still works."""
        if self.is_client:
            self.relay._from_client(data)
        else:
            self.relay._from_member(data)

    def eof_received(self):
        return self.ep.eof_received()

    def connection_lost(self, exc) -> None:
        self.fd = -1
        self.pending = False
        self.ep.connection_lost(exc)

    def pause_writing(self) -> None:
        self.pending = True
        self.relay.on_pause_writing(self.ep)

    def resume_writing(self) -> None:
        self.pending = False
        self.relay.on_resume_writing(self.ep)


def _pong_size(head) -> int:
    """A Pong's wire size from its first two bytes (the tracker checked them: length <= 125)."""
    return 2 + (4 if head[1] & 0x80 else 0) + (head[1] & 0x7F)


class KeepAlive:
    """A keep-alive route's state of one relay (``RelayCore.ka``; None on other routes).

    The per-read path's part: ``token`` (our Pings' payload), the leg bits ``heard`` (bytes
    came from the leg), ``answered`` (the leg's Pong to our Ping came back) and ``want`` (a
    Ping is owed to the leg at its stream's next frame boundary), and the Pongs being held
    back. The sweeper's part (proxy/keepalive.py), loop-time seconds: ``interval``, ``timeout``,
    ``due_client``/``due_member`` (next Ping) and ``deadline_client``/``deadline_member``
    (0: no Ping outstanding).
    """

    __slots__ = (
        "token", "heard", "answered", "want", "interval", "timeout", "due_client", "due_member",
        "deadline_client", "deadline_member", "_hold",
    )

    def __init__(self, token: bytes) -> None:
        if not 0 < len(token) <= 125:
            raise ValueError("a ping token is 1 to 125 bytes")
        self.token = bytes(token)
        self.heard = self.answered = self.want = 0
        self.interval = self.timeout = 0.0
        self.due_client = self.due_member = self.deadline_client = self.deadline_member = 0.0
        self._hold = [bytearray(), bytearray()]  # a Pong being read: client->member, member->client

    @property
    def holding(self) -> int:
        """Leg bits: a Pong from the leg is partly read and held back (the stream it travels
        on has forwarded nothing of it, so it is at a frame boundary)."""
        return (LEG_CLIENT if self._hold[0] else 0) | (LEG_MEMBER if self._hold[1] else 0)

    def _ours(self, frame) -> bool:
        """``frame``: a whole Pong as it came (header, mask key if masked, payload)."""
        token = self.token
        if frame[1] & 0x7F != len(token):
            return False
        if frame[1] & 0x80:
            key = frame[2:6]
            return bytes(b ^ key[i & 3] for i, b in enumerate(frame[6:])) == token
        return bytes(frame[2:]) == token


class RelayCore:
    __slots__ = (
        "client", "member", "c2u", "u2c", "track", "bytes_in", "bytes_out", "in_at_reply", "frames_at_reply",
        "client_sent_close", "member_sent_close", "closed_to_client", "closed_to_member",
        "c2u_broken", "u2c_broken", "answer", "ended", "shut", "gone", "activity",
        "client_leg", "member_leg", "ka",
    )

    Leg = RelayLeg  # what attach() makes; WsRelay uses a subclass that is an asyncio.BufferedProtocol

    def __init__(self, client, member, c2u=None, u2c=None) -> None:
        """``c2u``/``u2c``: the FrameTrackers of each direction (track mode), or None (raw)."""
        self.client = client
        self.member = member
        self.c2u = c2u
        self.u2c = u2c
        self.track = c2u is not None
        self.bytes_in = 0  # from the client, forwarded
        self.bytes_out = 0  # to the client
        # bytes_in and c2u's frame count when the member last sent something: what went to the
        # member after that is unanswered (reported when the member is lost mid-stream)
        self.in_at_reply = 0
        self.frames_at_reply = 0
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
        self.client_leg = None  # RelayLegs, once attach() made them the transports' protocols
        self.member_leg = None
        self.ka = None  # KeepAlive on keep-alive routes (enable_keepalive)

    def enable_keepalive(self, token: bytes) -> KeepAlive:
        """Absorb the Pongs carrying ``token`` both ways and offer Pings to ``_inject_ping``
        at frame boundaries (track mode only); returns the KeepAlive state (``ka``)."""
        if self.c2u is None:
            raise ValueError("keep-alive needs frame tracking (track or inspect relay)")
        if self.ka is None:
            self.ka = KeepAlive(token)
        return self.ka

    def attach(self) -> None:
        """Become both transports' protocol (a RelayLeg each); see the module docstring."""
        if self.client_leg is None:
            self.client_leg = self._attach(self.client, True)
            self.member_leg = self._attach(self.member, False)

    def _attach(self, ep, is_client: bool):
        leg = self.Leg(self, ep, is_client)
        transport = ep.transport
        if ep.closed or transport is None or transport.is_closing():
            return leg  # its events still reach the Endpoint
        transport.set_protocol(leg)
        # "Pause while anything is buffered" (may call leg.pause_writing() right away). A TLS
        # transport pauses at the high-water mark, a plain one above it: (0, 0) would pause
        # a TLS one for good after a write, so it gets (1, 0).
        transport.set_write_buffer_limits(0 if transport.get_extra_info("sslcontext") is None else 1, 0)
        if transport.get_write_buffer_size() and not leg.pending:
            leg.pause_writing()  # it was paused under the old limits and has not drained
        return leg

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
            if self.ka is not None:
                self._relay_ka(True, data)
                return
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
        self.in_at_reply = self.bytes_in
        if self.c2u is not None:
            self.frames_at_reply = self.c2u.frames
        if self.answer is not None:
            self._member_answer(data)
            return
        tracker = self.u2c
        if tracker is not None:
            if self.u2c_broken:
                return
            if self.ka is not None:
                self._relay_ka(False, data)
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

    # -- the keep-alive path (see the module docstring) ----------------------------------
    def _relay_ka(self, from_client: bool, data) -> None:
        ka = self.ka
        tracker = self.c2u if from_client else self.u2c
        side = 0 if from_client else 1  # index of this stream's hold
        to_leg = LEG_MEMBER if from_client else LEG_CLIENT  # where this stream goes: its Pings ride it
        ka.heard |= LEG_CLIENT if from_client else LEG_MEMBER
        if type(data) is not bytes:
            data = bytes(data)
        view = memoryview(data)  # fed to the tracker without copies; data[a:b] is what goes on
        pos, end = 0, len(data)
        while pos < end:
            if not ka._hold[side]:
                if ka.want & to_leg and tracker.at_boundary:
                    self._ping_now(to_leg)
                try:
                    n = tracker.feed_to_frame(view[pos:], not ka.want & to_leg)
                except FrameError as exc:
                    self._violation(from_client, exc, data[pos:])
                    return
                if n:
                    self._pass(from_client, data[pos:pos + n])  # data itself when it is all of it
                    pos += n
                if pos == end or data[pos] & 0x0F != OP_PONG:
                    continue  # all read, or a frame begins where the owed Ping goes
            n = self._hold_pong(from_client, view[pos:])
            if n < 0:
                return  # a violation inside the Pong (handled)
            pos += n
        if ka.want & to_leg and (tracker.at_boundary or ka._hold[side]):
            self._ping_now(to_leg)
        if from_client:
            if self.client_sent_close and self.closed_to_client:
                self._shut(self.client)
        elif self.closed_to_client and (self.client_sent_close or self.c2u_broken):
            self._shut(self.client)

    def _pass(self, from_client: bool, piece) -> None:
        """What the plain path does with a read, for a piece of one the tracker has read."""
        if from_client:
            tracker = self.c2u
            if not self.client_sent_close and tracker.close_code != -1:
                self.client_sent_close = True
                self._first_close(CLIENT, tracker.close_code)
            if not self.closed_to_member and not self.ended & LEG_MEMBER:
                self.bytes_in += len(piece)
                self.member.write(piece)
                if self.client_sent_close:
                    self.closed_to_member = True
        else:
            tracker = self.u2c
            if not self.member_sent_close and tracker.close_code != -1:
                self.member_sent_close = True
                self._first_close(MEMBER, tracker.close_code)
            if not self.closed_to_client and not self.ended & LEG_CLIENT:
                self.bytes_out += len(piece)
                self.client.write(piece)
                if self.member_sent_close:
                    self.closed_to_client = True

    def _hold_pong(self, from_client: bool, view) -> int:
        """Take the bytes of the Pong being read (at most its end) into the hold; once it is
        whole, absorb it if it carries our token, else forward it. Returns the bytes taken,
        -1 after a violation (handled: the hook gets the held bytes, so nothing is valid
        before the bad frame and the far side is at a frame boundary)."""
        ka = self.ka
        tracker = self.c2u if from_client else self.u2c
        hold = ka._hold[0 if from_client else 1]
        used = 0
        while used < len(view):
            need = (2 - len(hold)) if len(hold) < 2 else (_pong_size(hold) - len(hold))
            if not need:
                break
            piece = bytes(view[used:used + need])
            hold += piece
            try:
                tracker.feed(piece)
            except FrameError as exc:
                held = bytes(hold)
                hold.clear()
                self._violation(from_client, exc, held)
                return -1
            used += len(piece)
        if len(hold) >= 2 and len(hold) == _pong_size(hold):
            frame = bytes(hold)
            hold.clear()
            if ka._ours(frame):
                ka.answered |= LEG_CLIENT if from_client else LEG_MEMBER
            else:
                self._pass(from_client, frame)
        return used

    def _ping_now(self, to_leg: int) -> None:
        self.ka.want &= ~to_leg
        self._inject_ping(CLIENT if to_leg == LEG_CLIENT else MEMBER)

    def _violation(self, from_client: bool, exc: FrameError, data: bytes) -> None:
        if from_client:
            self._client_violation(exc, data)
        else:
            self._member_violation(exc, data)

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

    def _inject_ping(self, side: str) -> None:
        raise NotImplementedError
