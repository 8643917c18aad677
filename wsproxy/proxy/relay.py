"""WsRelay: the two legs of an upgraded connection, after the 101.

Modes (per route, see ARCHITECTURE.md principle 3):
- ``track`` (default): a FrameTracker per direction parses frame headers only; payload
  bytes are forwarded untouched (still masked). Knowing the frame boundaries lets the
  proxy inject its own Close frames cleanly, count frames, and reject protocol violations.
- ``raw``: bytes are spliced with no frame awareness at all; the proxy can then only
  close TCP connections, never send a Close frame.

Closing, per leg. A Close frame passing through is forwarded, and after it nothing more is
sent that way. The proxy injects a Close of its own only at a frame boundary:
- the member disconnects or dies without a Close  -> Close 1014 to the client;
- the client disappears without a Close           -> masked Close 1001 to the member;
- shutdown / drain                                 -> Close 1001 to both;
- the ws idle timeout                              -> Close 1001 to both;
- a protocol violation on either side             -> the violating side gets the violation's
  code from the proxy (1002 protocol error, 1007 invalid UTF-8, 1009 too big: the route's
  ``max_message_size`` / ``max_frame_size`` / ``validate_utf8``, checked by the trackers),
  the other side a Close of the proxy's own: the member 1001 ("going away") when the client
  broke the rules, the client 1011 (a server error, from where it stands) when the member
  did. The frames before the bad one are delivered, nothing of the bad one is. After a
  client's violation the member answers our 1001 first (track mode): its replies to the
  valid messages still reach the client, then the client gets the violation's Close in
  place of the member's, as from a conformant server reached directly. Each violation is
  one INFO log line and a ``wsproxy_rejections_total`` count (ws_protocol, ws_utf8, ws_too_big).
- a leg that stops answering our pings (keep-alive) -> Close 1001 to the other side, and
  the silent leg is aborted (proxy/keepalive.py).
A leg whose closing handshake is done (or whose peer is gone) is shut with a FIN, then
closed when the peer closes too, or aborted after ``LINGER`` seconds: a lingering close,
so a Close frame is never destroyed by a reset for unread data.

Keep-alive (``use_keepalive``, track and inspect relays): the sweeper in proxy/keepalive.py
decides when a leg is pinged and when it is dead; ``ping`` and ``leg_silent`` here write the
Ping and close; the relay core cuts our Pongs out of the streams and calls ``_inject_ping``
when a Ping owed to a leg can go in between frames.

Reads. ``start`` hands both transports to RelayCore's legs (``attach``): each transport's
protocol becomes a ``_Leg``, a BufferedProtocol that reads into the worker's shared read
buffer and relays in one C call (``protocol/relay_core.py`` says how, and how backpressure
and buffer ownership work). The Endpoints stay: they still write, pause reading by reason,
close, and receive eof / connection_lost through the legs.
"""

from __future__ import annotations

import asyncio
import logging

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.logs import event
from wsproxy._speedups import FrameReader, build_close, build_frame
from wsproxy.config.schema import WsLimits
from wsproxy.protocol.frames import OP_CLOSE, OP_PING
from wsproxy.protocol.relay_core import LEG_BOTH, LEG_CLIENT, LEG_MEMBER
from wsproxy.proxy import keepalive

LINGER = 2.0  # seconds a shut leg waits for its peer to close
CLIENT = "client"
MEMBER = "member"
PROXY = "proxy"
_C, _M, _BOTH = LEG_CLIENT, LEG_MEMBER, LEG_BOTH  # leg bits of ended/shut/gone
NO_LIMITS = WsLimits()
REJECTIONS = {1007: "ws_utf8", 1009: "ws_too_big"}  # metrics.REJECT_REASONS by close code; else ws_protocol


def _tracker(masked: bool, rsv: int, limits: WsLimits):
    """The FrameTracker of one direction (C or pure): the negotiated RSV bits, the limits."""
    return _speedups.FrameTracker(masked, rsv, limits.max_frame_size, limits.max_message_size,
                                  limits.validate_utf8)


class _Leg(_speedups.RelayCore.Leg, asyncio.BufferedProtocol):
    """A transport's protocol after the 101: RelayCore's leg (C or pure), declared an
    asyncio.BufferedProtocol because asyncio's transports check that type to read into
    ``get_buffer()`` (uvloop's check for ``get_buffer`` is met either way)."""

    __slots__ = ()


class WsRelay(_speedups.RelayCore):
    """The relay of one upgraded connection. The per-read data path (the legs' reads, the
    backpressure callbacks, flags and counters) is RelayCore's, in C when built
    (``wsproxy/_ext/relay_core``) or its pure twin; the rare events are here."""

    __slots__ = (
        "loop", "done", "close_code", "closed_by", "reason", "rsv", "idle_timeout", "idle_since",
        "sweeper", "linger_handles", "lost_in_flight", "limits", "listener", "route", "metrics",
    )

    Leg = _Leg

    def __init__(self, client, member, *, mode: str, rsv: int, idle_timeout: float, sweeper=None,
                 limits: WsLimits | None = None) -> None:
        """``limits``: the route's message limits (config.schema.ws_limits), applied both ways
        in track mode; None: none."""
        track = mode == "track"
        limits = limits or NO_LIMITS
        super().__init__(client, member, _tracker(True, rsv, limits) if track else None,
                         _tracker(False, rsv, limits) if track else None)
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.close_code: int | None = None  # the first Close of the session (1006: none, TCP gone)
        self.closed_by: str | None = None
        self.reason: str | None = None
        self.rsv = rsv
        self.idle_timeout = idle_timeout
        self.idle_since = 0.0  # loop time of the sweep that found no activity
        self.sweeper = sweeper  # proxy/idle.py: checks `activity` for the idle timeout
        self.linger_handles: list[asyncio.TimerHandle] = []
        self.lost_in_flight: tuple | None = None  # (frames, bytes) unanswered when the member was lost
        self.limits = limits
        # Where violations are reported (set by proxy/websocket.py): the listener's name and
        # the route's label for the log line, node/metrics.py's Metrics (or None) for the count.
        self.listener: str | None = None
        self.route: str | None = None
        self.metrics = None

    def new_tracker(self, masked: bool):
        """A FrameTracker for a new stream of this relay (a new member's, proxy/reconnect.py)."""
        return _tracker(masked, self.rsv, self.limits)

    # What App.stop uses on every live session: the awaitable that ends with it, the client
    # connection to abort when the grace period is over, and shutdown().
    @property
    def task(self) -> asyncio.Future:
        return self.done

    @property
    def ep(self):
        return self.client

    def _bit(self, ep) -> int:
        return _C if ep is self.client else _M

    # -- start / finish ---------------------------------------------------------------
    def start(self, client_data: bytes, member_data: bytes, client_eof: bool = False) -> None:
        """Take over both endpoints; relay what each side sent before the 101 was relayed.

        ``client_eof``: the client half-closed during the handshake (its EOF went to the
        HTTP session, not to us).
        """
        self.client.sink = self
        self.member.sink = self
        # Pause reasons of the HTTP stages go first; attach() may then pause a leg again
        # (PEER) if the other one still holds unsent bytes (the 101, say).
        self.client.resume_all_reading()
        self.member.resume_all_reading()
        self.attach()
        if member_data:
            self.on_data(self.member, member_data)
        if client_data:
            self.on_data(self.client, client_data)
        if self.idle_timeout > 0 and self.sweeper is not None:
            self.idle_since = self.loop.time()
            self.sweeper.add(self)
        ka = self.ka
        if ka is not None and self.sweeper is not None:
            ka.due_client = ka.due_member = keepalive.first_due(self.loop.time(), ka.interval)
            self.sweeper.keepalive.add(self)
        if client_eof and not self.client.closed:
            self.on_eof(self.client)
        for ep in (self.client, self.member):
            if ep.closed and not self.ended & self._bit(ep):
                self.on_lost(ep, None)

    def _first_close(self, by: str, code: int, reason: str | None = None) -> None:
        if self.closed_by is None:
            self.closed_by = by
            self.close_code = code
            if reason:
                self.reason = reason

    def _maybe_done(self) -> None:
        if self.gone == _BOTH and not self.done.done():
            if self.sweeper is not None:
                self.sweeper.discard(self)
                if self.ka is not None:
                    self.sweeper.keepalive.discard(self)
            for h in self.linger_handles:
                h.cancel()
            self.done.set_result(None)

    # -- injected Close frames -------------------------------------------------------
    def out_at_boundary(self, to: int) -> bool:
        """The stream towards leg ``to`` (a leg bit) is between frames: its tracker is, or
        what it is reading is one of the peer's Pongs, held back (nothing of it went on)."""
        tracker = self.u2c if to == _C else self.c2u
        if tracker.at_boundary:
            return True
        ka = self.ka
        return ka is not None and bool(ka.holding & (_M if to == _C else _C))

    def _close_client(self, code: int, reason: str, at_boundary: bool | None = None) -> bool:
        """Send our own Close to the client if the member->client stream is at a boundary."""
        if self.closed_to_client or self.ended & _C or self.u2c is None:
            return False
        if not (self.out_at_boundary(_C) if at_boundary is None else at_boundary):
            return False
        frame = build_close(code, reason, mask=False)
        self.client.write(frame)
        self.bytes_out += len(frame)
        self.closed_to_client = True
        return True

    def _close_member(self, code: int, reason: str, at_boundary: bool | None = None) -> bool:
        """Send our own (masked) Close to the member if client->member is at a boundary."""
        if self.closed_to_member or self.ended & _M or self.c2u is None:
            return False
        if not (self.out_at_boundary(_M) if at_boundary is None else at_boundary):
            return False
        self.member.write(build_close(code, reason, mask=True))
        self.closed_to_member = True
        return True

    # -- leg shutdown ---------------------------------------------------------------------
    def _shut(self, ep) -> None:
        """Half-close ``ep`` (FIN after the buffered writes), then close when its peer does."""
        bit = self._bit(ep)
        if self.shut & bit or self.gone & bit or ep.closed:
            return
        self.shut |= bit
        transport = ep.transport
        if self.ended & bit or not transport.can_write_eof():
            ep.close()
            return
        transport.write_eof()
        self.linger_handles.append(self.loop.call_later(LINGER, ep.abort))

    # -- transport events ------------------------------------------------------------
    def on_eof(self, ep) -> bool:
        if not self.ended & self._bit(ep):
            self._leg_ended(ep, None)
        ep.close()
        return False

    def on_lost(self, ep, exc) -> None:
        if not self.ended & self._bit(ep):
            self._leg_ended(ep, exc)
        self.gone |= self._bit(ep)
        self._maybe_done()

    def _leg_ended(self, ep, exc) -> None:
        """``ep``'s peer closed its side (EOF) or the connection was lost."""
        self.ended |= self._bit(ep)
        if not self.track:
            self._first_close(MEMBER if ep is self.member else CLIENT, None,
                              "connection closed (raw relay: Close frames are not tracked)")
            self._shut(self.client if ep is self.member else self.member)
        elif ep is self.member:
            if self.answer is not None:  # it left without answering our Close after a client's violation
                self._cut_after_violation(*self.answer[1:])
            elif not (self.member_sent_close or self.c2u_broken or self.u2c_broken):
                if self._reconnect(exc):
                    return  # proxy/reconnect.py: the client waits for another member
                self._member_lost(exc)
            self._shut(self.client)
        else:
            if not self.client_sent_close:
                why = "client closed the connection without a Close frame"
                if exc is not None:
                    why = "client connection lost (%s)" % exc.__class__.__name__
                self._first_close(CLIENT, 1006, why)
                self._close_member(1001, "client went away")
            self._shut(self.member)

    def _member_lost(self, exc) -> None:
        """The member left without a Close: Close 1014 to the client at a frame boundary."""
        why = "member closed the connection without a Close frame"
        if exc is not None:
            why = "member connection lost (%s)" % exc.__class__.__name__
        self._first_close(MEMBER, 1006, why)
        # What the client sent after the member's last word went to a member that is
        # gone: it may or may not have been processed (no application ack to tell).
        c2u = self.c2u
        self.lost_in_flight = (c2u.frames - self.frames_at_reply if c2u is not None else None,
                               self.bytes_in - self.in_at_reply)
        if self._close_client(1014, "member lost"):
            event(logging.INFO, "member lost: sent Close 1014 to the client",
                  client=self.client.address, unanswered_frames=self.lost_in_flight[0],
                  unanswered_bytes=self.lost_in_flight[1])
        elif not self.closed_to_client:
            self.reason = why + "; mid-frame, so no Close frame could be sent"

    def _reconnect(self, exc) -> bool:
        """The member left without a Close: True if another member will take over (a route
        with ``reconnect``: proxy/reconnect.py); here, never."""
        return False

    def _valid_prefix(self, tracker, data: bytes) -> int:
        """Bytes of ``data`` before the frame that broke the protocol (-1: it began earlier,
        in a chunk already forwarded, so the far side is mid-frame)."""
        return tracker.frame_start - (tracker.bytes_in - len(data))

    def _violation_seen(self, side: str, exc: FrameError) -> bool:
        """Report a violation: the access log's close fields (closed by the proxy, with the
        violation's code), one INFO line, the rejection counter. False, and nothing reported,
        when an earlier violation already has the WebSocket closing."""
        if self.c2u_broken or self.u2c_broken:
            return False
        self._first_close(PROXY, exc.close_code, "%s protocol violation: %s" % (side, exc.reason))
        event(logging.INFO, "websocket protocol violation", listener=self.listener, client=self.client.address,
              route=self.route, side=side, code=exc.close_code, reason=exc.reason)
        if self.metrics is not None:
            self.metrics.rejected(self.listener, REJECTIONS.get(exc.close_code, "ws_protocol"))
        return True

    def _client_violation(self, exc: FrameError, data: bytes) -> None:
        """The client broke the protocol (``data``: the read that holds the bad frame): what
        came before the bad frame still goes to the member, then ``_fail_client``."""
        first = self._violation_seen(CLIENT, exc)
        self.c2u_broken = True
        if not first:
            self._shut(self.client)
            return
        valid = self._valid_prefix(self.c2u, data)
        if valid > 0 and not self.closed_to_member and not self.ended & _M:
            self.member.write(data[:valid])
            self.bytes_in += valid
            if self.c2u.close_code != -1 and not self.client_sent_close:  # a Close came first
                self.client_sent_close = self.closed_to_member = True
        self._fail_client(exc, member_at_boundary=valid >= 0)

    def _fail_client(self, exc: FrameError, member_at_boundary: bool) -> None:
        """Close 1001 to the member (if its stream is between frames: else its connection is
        just shut); then the violation's Close to the client, once the member has answered
        (its replies to the valid messages pass, its Close is replaced: ``_member_answer``),
        or at once when it cannot (``_member_may_answer``). A silent member is cut after LINGER."""
        code, reason = exc.close_code, exc.reason[:100]
        sent = self._close_member(1001, "client violated the protocol", at_boundary=member_at_boundary)
        self.closed_to_member = True
        if sent and not self.closed_to_client and self._member_may_answer():
            self.answer = (FrameReader(masked=False, rsv_allowed=self.rsv), code, reason)
            self.linger_handles.append(self.loop.call_later(LINGER, self._cut_after_violation, code, reason))
        else:
            self._cut_after_violation(code, reason)

    def _member_may_answer(self) -> bool:
        """The client's stream is between frames, so the member's answer can go to it."""
        return self.u2c.at_boundary

    def _member_answer(self, data: bytes) -> None:
        """After a client's violation: the member's last frames (its replies to the valid
        messages) pass; its Close is replaced by ours, with the violation's code."""
        reader, code, reason = self.answer
        try:
            frames = reader.feed(data)
        except FrameError:
            frames = None
        for frame in frames or ():
            if frame.opcode == OP_CLOSE:
                break
            out = build_frame(frame.opcode, frame.payload, fin=frame.fin, mask=False, rsv=frame.rsv)
            self.client.write(out)
            self.bytes_out += len(out)
        else:
            if frames is not None:
                return
        self.answer = None
        self._cut_after_violation(code, reason)

    def _member_violation(self, exc: FrameError, data: bytes) -> None:
        """The member broke the protocol (``data``: the read that holds the bad frame): what
        came before the bad frame still goes to the client, then ``_fail_member``."""
        first = self._violation_seen(MEMBER, exc)
        self.u2c_broken = True
        if not first:
            self._shut(self.member)
            return
        valid = self._valid_prefix(self.u2c, data)
        if valid > 0 and not self.closed_to_client and not self.ended & _C:
            self.client.write(data[:valid])
            self.bytes_out += valid
            if self.u2c.close_code != -1 and not self.member_sent_close:
                self.member_sent_close = self.closed_to_client = True
        self._fail_member(exc, client_at_boundary=valid >= 0)

    def _fail_member(self, exc: FrameError, client_at_boundary: bool) -> None:
        """The violation's Close to the member, whose connection is then shut; Close 1011 to
        the client (if its stream is between frames), whose own Close ends its leg, or LINGER."""
        self._close_member(exc.close_code, exc.reason[:100])
        self.closed_to_member = True
        self._shut(self.member)
        sent = self._close_client(1011, "upstream protocol error", at_boundary=client_at_boundary)
        self.closed_to_client = True
        if sent and not self.client_sent_close:
            self.linger_handles.append(self.loop.call_later(LINGER, self._shut, self.client))
        else:
            self._shut(self.client)

    def _cut_after_violation(self, code: int, reason: str) -> None:
        self.answer = None
        if not self.gone & _C and not self.closed_to_client:
            self._close_client(code, reason)
            self.closed_to_client = True
        self._shut(self.client)
        self._shut(self.member)

    # -- keep-alive (the policy is proxy/keepalive.py's) -------------------------------
    def use_keepalive(self, interval: float, timeout: float) -> bool:
        """Ping both legs every ``interval`` s, close a leg silent for ``timeout`` s after a
        ping; call before ``start``. False (and nothing happens) in raw mode: no frame
        boundaries to put a ping between."""
        if interval <= 0 or not self.track:
            return False
        ka = self.enable_keepalive(keepalive.TOKEN)
        ka.interval = interval
        ka.timeout = timeout
        return True

    def keepalive_open(self) -> bool:
        """Pings still make sense: no Close seen or sent either way, no leg ended or shut,
        no violation being answered."""
        return not (self.done.done() or self.ended or self.shut or self.closed_to_client
                    or self.closed_to_member or self.client_sent_close or self.member_sent_close
                    or self.c2u_broken or self.u2c_broken or self.answer is not None)

    def stop_keepalive(self) -> None:
        """No more pings (the WebSocket is closing); our Pongs are still absorbed."""
        ka = self.ka
        ka.want = 0
        ka.interval = 0.0  # idle_tick: the idle timeout applies again
        if self.sweeper is not None:
            self.sweeper.keepalive.discard(self)

    def ping(self, to: int, now: float) -> None:
        """Send our Ping to leg ``to`` (its stream is between frames) and start waiting."""
        ka = self.ka
        if to == _C:
            frame = b"\x89" + bytes((len(ka.token),)) + ka.token
            self.client.write(frame)
            self.bytes_out += len(frame)
            ka.deadline_client = now + ka.timeout
            ka.due_client = now + ka.interval
        else:
            self.member.write(build_frame(OP_PING, ka.token, mask=True))
            ka.deadline_member = now + ka.timeout
            ka.due_member = now + ka.interval
        ka.heard &= ~to  # only what comes after the Ping counts
        ka.answered &= ~to

    def _inject_ping(self, side: str) -> None:
        """The relay core: the stream towards ``side`` reached a frame boundary, and a Ping
        is owed there (``ka.want``, which the core cleared)."""
        if self.keepalive_open():
            self.ping(_C if side == CLIENT else _M, self.loop.time())

    def leg_silent(self, bit: int) -> None:
        """Leg ``bit`` did not answer our Ping in time: Close 1001 to the other side (at a
        frame boundary, else its connection is just shut), and the silent leg is aborted."""
        timeout = self.ka.timeout
        self.stop_keepalive()
        if bit == _M:
            silent, why = self.member, "member did not answer a ping within %gs" % timeout
            sent = self._close_client(1001, "member did not answer a ping")
        else:
            silent, why = self.client, "client did not answer a ping within %gs" % timeout
            sent = self._close_member(1001, "client did not answer a ping")
        self._first_close(PROXY, 1001, why)
        event(logging.INFO, "keep-alive: a leg did not answer a ping", side=MEMBER if bit == _M else CLIENT,
              timeout=timeout, client=self.client.address)
        if not sent:
            if self.closed_by == PROXY and self.reason == why:
                self.reason = why + "; mid-frame, so no Close frame could be sent"
            # Nothing more goes that way: the silent leg's end must not send a 1014 instead.
            if bit == _M:
                self.closed_to_client = True
            else:
                self.closed_to_member = True
        silent.abort()  # its connection_lost shuts the other leg (_leg_ended)

    # -- timers and operator actions --------------------------------------------------
    def idle_tick(self, now: float) -> None:
        """Called by the IdleSweeper every period: close after ``idle_timeout`` of silence,
        unless the keep-alive runs and no Ping waits for a frame boundary: then the pings
        judge the WebSocket (an idle one alive by ping stays)."""
        if self.done.done():
            return
        if self.activity:
            self.activity = False
            self.idle_since = now
        elif now - self.idle_since >= self.idle_timeout:
            ka = self.ka
            if ka is not None and ka.interval and not ka.want:
                self.idle_since = now
                return
            self.sweeper.discard(self)
            self.close_both(1001, "idle timeout (%gs)" % self.idle_timeout)

    def close_both(self, code: int, reason: str) -> None:
        """Proxy-initiated close of both legs (shutdown, idle timeout)."""
        self._first_close(PROXY, code, reason)
        sent_client = self._close_client(code, reason)
        sent_member = self._close_member(code, reason)
        if not self.track or not sent_client:
            self._shut(self.client)
        if not self.track or not sent_member:
            self._shut(self.member)
        # Otherwise each peer answers our Close and the legs shut as handshakes complete;
        # the linger bounds the wait.
        self.linger_handles.append(self.loop.call_later(LINGER * 2, self._force_close))

    def _force_close(self) -> None:
        for ep in (self.client, self.member):
            if not self.gone & self._bit(ep):
                ep.abort()

    def shutdown(self) -> None:
        self.close_both(1001, "proxy shutting down")
