"""ReconnectRelay: a WebSocket whose member leg is reconnected when its member is lost
(``reconnect = { deadline, buffer }`` on the pool or the route; track relays only).

Only routes with ``reconnect`` use this class (websocket.py); every other route keeps
WsRelay and its C read path untouched.

What it costs while nothing goes wrong: each client read is copied (bytes) and kept in
``held`` until the member has said something after it; each member read first trims
``held`` to the start of the client's message that was being sent when the member spoke
(a short walk over frame headers, in Python). ``held`` is thus the client's unanswered bytes,
starting at a message boundary. If it grows beyond ``buffer``, reconnect is off for this
connection (``reconnect_off`` = "buffer overflow") and a lost member means Close 1014.

When the member leaves without a Close (``_reconnect``, called by WsRelay._leg_ended):

- conditions, else Close 1014 as WsRelay does: held bytes kept (no overflow), no Close seen
  or sent either way, no violation, and the member->client stream between messages (at a
  frame boundary and not inside a fragmented message: the new member starts a new stream);
- the client leg stays open; what it sends meanwhile is held (reading pauses once ``held``
  reaches ``buffer``), and pings towards it stop until a member is back;
- the dead member is released; another is picked and acquired through connect_to_pool (the
  dead one is avoided on the first try), the stored upgrade head (same Sec-WebSocket-Key)
  is sent, its 101 must carry the right Sec-WebSocket-Accept, the same subprotocol and no
  extension; the 101 is not forwarded. A failed try is retried every 0.25 s until ``deadline``;
- the new member's leg is attached like the first one, the held bytes are written to it
  (the replay: at-least-once, the dead member may have processed them), and relaying goes on.
- no member within ``deadline``, or the client closes or leaves meanwhile: Close 1014 (or
  the client's own close goes on as usual).
"""

from __future__ import annotations

import asyncio
import logging

from wsproxy import _speedups
from wsproxy.errors import FrameError, HandshakeError, HttpError, UpstreamError
from wsproxy.logs import event
from wsproxy.protocol import http1
from wsproxy.protocol.handshake import check_server_accept
from wsproxy.protocol.relay_core import LEG_CLIENT, LEG_MEMBER, PEER
from wsproxy.proxy import keepalive
from wsproxy.proxy.relay import WsRelay, _Leg
from wsproxy.proxy.upstream import connect_to_pool

__all__ = ["ReconnectRelay"]

RETRY_PAUSE = 0.25  # seconds between tries while no member takes the handshake
PAUSE = "reconnect"  # pause reason of the client leg while the held bytes are full
_C, _M = LEG_CLIENT, LEG_MEMBER


class _HoldingLeg(_Leg):
    """A leg of a reconnect relay: client reads are copied and held before they are
    relayed; a member read first tells the relay the member has spoken."""

    __slots__ = ()

    def get_buffer(self, sizehint: int):
        buf = super().get_buffer(sizehint)
        if self.is_client:
            self.relay.read_buf = buf
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        relay = self.relay
        if self.is_client:
            buf, relay.read_buf = relay.read_buf, None
            with memoryview(buf) as view:
                data = bytes(view[:nbytes])
            relay.on_data(self.ep, data)
        else:
            relay.member_spoke()
            super().buffer_updated(nbytes)


class _Handshake:
    """The sink of a new member connection until its 101 (or failure) is known."""

    def __init__(self, loop) -> None:
        self.parser = http1.ResponseParser()
        self.head = None
        self.leftover = b""
        self.future = loop.create_future()

    def _end(self, result=None, error: str | None = None) -> None:
        if not self.future.done():
            if error is not None:
                self.future.set_exception(HandshakeError(502, error))
            else:
                self.future.set_result(result)

    def on_data(self, ep, data) -> None:
        if self.future.done():
            self.leftover += data  # frames right after the 101, before the relay takes over
            return
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            self._end(error=exc.reason)
            return
        for ev in events:
            if isinstance(ev, http1.ResponseHead):
                if ev.status == 101:
                    self.head = ev
                elif ev.status >= 200:
                    self._end(error="member answered the upgrade with %d, not 101" % ev.status)
                    return
            elif isinstance(ev, http1.Upgrade) and self.head is not None:
                self.leftover = ev.leftover
                self._end(self.head)

    def on_eof(self, ep) -> bool:
        self._end(error="member closed the connection during the handshake")
        return False

    def on_lost(self, ep, exc) -> None:
        self._end(error="member connection lost during the handshake")

    def on_pause_writing(self, ep) -> None:
        pass

    def on_resume_writing(self, ep) -> None:
        pass


class ReconnectRelay(WsRelay):
    __slots__ = (
        "rc", "pool", "pool_member", "member_addr", "first_member", "request_head", "ws_key", "subprotocol",
        "proxy_header", "live", "held", "held_at", "walk_at", "msg_start", "fragmented", "last_end", "last_msg",
        "read_buf", "reconnecting", "reconnects", "reconnect_off", "lost_exc", "lost_at", "old_member",
        "old_gone", "rtask", "ka_saved", "frames_out_before",
    )

    Leg = _HoldingLeg

    def __init__(self, client, member, *, rc, pool, pool_member, request_head: bytes, ws_key: str,
                 subprotocol: str | None, proxy_header: bytes | None, live=None, **kwargs) -> None:
        super().__init__(client, member, mode="track", **kwargs)
        self.rc = rc  # config.schema.ReconnectConfig
        self.pool = pool
        self.pool_member = pool_member  # the balancing Member this relay holds (acquired), or None
        self.member_addr = self.first_member = str(pool_member.addr)
        self.request_head = request_head  # the upgrade head the first member got
        self.ws_key = ws_key
        self.subprotocol = subprotocol  # the first 101's Sec-WebSocket-Protocol: a new one must match
        self.proxy_header = proxy_header
        self.live = live  # node/live.py registry (drain, rebalance), or None
        # The client's bytes since the member last spoke, from a message boundary (c2u stream
        # offsets: held[0] is at held_at). None: reconnect is off for this connection.
        self.held: bytearray | None = bytearray()
        self.held_at = 0
        # The walk over held's frame headers: walk_at is the next frame's offset; msg_start
        # the start of the message being sent; last_end/last_msg: the end of the last frame
        # walked and the start of its message (or its own start: a control frame outside one).
        self.walk_at = 0
        self.msg_start = 0
        self.fragmented = False
        self.last_end = 0
        self.last_msg = 0
        self.read_buf = None
        self.reconnecting = False
        self.reconnects = 0
        self.reconnect_off: str | None = None
        self.lost_exc = None
        self.lost_at = 0
        self.old_member = None
        self.old_gone = None
        self.rtask = None
        self.ka_saved = None
        self.frames_out_before = 0  # frames of the member->client streams of members replaced

    # -- holding the client's bytes --------------------------------------------------
    def on_data(self, ep, data) -> None:
        if ep is self.client:
            held = self.held
            if held is not None and not self.c2u_broken:
                held += data
                if self.reconnecting:
                    if len(held) >= self.rc.buffer:
                        self.client.pause_reading(PAUSE)
                elif len(held) > self.rc.buffer:
                    self._hold_off("buffer overflow (more than %d unanswered client bytes)" % self.rc.buffer)
        elif ep is self.member:
            self.member_spoke()
        super().on_data(ep, data)
        if self.reconnecting and self._abandoned():
            self._stop("the client closed while the member leg was reconnecting")

    def close_both(self, code: int, reason: str) -> None:
        super().close_both(code, reason)
        if self.reconnecting:
            self._stop("closed by the proxy (%s) while the member leg was reconnecting" % reason)

    def _stop(self, why: str) -> None:
        task = self.rtask
        if task is not None and not task.done():
            task.cancel()
        if self.reconnecting:
            self._give_up(why)

    def _hold_off(self, why: str) -> None:
        self.held = None
        if self.reconnect_off is None:
            self.reconnect_off = why

    def member_spoke(self) -> None:
        """The member sent something: the client's bytes so far are answered, except the
        message being sent (it is replayed whole if the member is lost)."""
        held = self.held
        if held is None or self.reconnecting:
            return
        end = self.held_at + len(held)
        self._walk(end)
        cut = self.last_msg if self.walk_at > end else (self.msg_start if self.fragmented else self.walk_at)
        if cut > self.held_at:
            del held[:cut - self.held_at]
            self.held_at = cut

    def _walk(self, upto: int) -> None:
        """Read the headers of the held frames that begin before ``upto``."""
        held, base, pos = self.held, self.held_at, self.walk_at
        end = base + len(held)
        while pos < upto:
            i = pos - base
            if end - pos < 2:
                break
            b0, b1 = held[i], held[i + 1]
            n, size = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, size = int.from_bytes(held[i + 2:i + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, size = int.from_bytes(held[i + 2:i + 10], "big"), 10
            if b1 & 0x80:
                size += 4
            opcode = b0 & 0x0F
            if opcode < 8:  # data: a new message unless it continues one
                if opcode and not self.fragmented:
                    self.msg_start = pos
                self.fragmented = not b0 & 0x80
                self.last_msg = self.msg_start
            else:
                self.last_msg = self.msg_start if self.fragmented else pos
            pos += size + n
            self.last_end = pos
        self.walk_at = pos

    def _held_frames(self) -> int:
        """Complete frames in ``held`` (for the unanswered counts after a replay)."""
        held, count, pos = self.held, 0, 0
        while len(held) - pos >= 2:
            n, size = held[pos + 1] & 0x7F, 2
            if n == 126:
                n, size = int.from_bytes(held[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                n, size = int.from_bytes(held[pos + 2:pos + 10], "big"), 10
            pos += size + n + (4 if held[pos + 1] & 0x80 else 0)
            if pos <= len(held):
                count += 1
        return count

    # -- keep-alive: remembered so that it can start again on the new member ----------
    def use_keepalive(self, interval: float, timeout: float) -> bool:
        ok = super().use_keepalive(interval, timeout)
        if ok:
            self.ka_saved = (interval, timeout)
        return ok

    def keepalive_open(self) -> bool:
        return not self.reconnecting and super().keepalive_open()

    # -- the member is lost -------------------------------------------------------------
    def _why_not(self) -> str | None:
        if self.held is None:
            return None  # reconnect_off says why already
        if (self.client_sent_close or self.closed_to_client or self.closed_to_member or self.c2u_broken
                or self.u2c_broken or self.answer is not None or self.ended & _C or self.shut & _C):
            return "the WebSocket was closing"
        if self.held_at + len(self.held) != self.c2u.bytes_in:
            return "held bytes out of step"  # not expected: a safety net
        old = self.u2c
        if not old.at_boundary:
            return "member lost inside a frame"
        # The old tracker is retired (a new member starts a new stream): probe it with an
        # empty text frame, which it refuses inside a fragmented message.
        self.frames_out_before += old.frames
        self.u2c = self.new_tracker(False)
        try:
            old.feed(b"\x81\x00")
        except FrameError:
            return "member lost inside a fragmented message"
        return None

    def _reconnect(self, exc) -> bool:
        if self.reconnecting or self.done.done():
            return False
        why = self._why_not()
        if why is not None or self.held is None:
            if why is not None:
                self._hold_off(why)
            return False
        self.reconnecting = True
        self.lost_exc = exc
        self.lost_at = self.c2u.bytes_in
        self.old_member = self.member
        self.old_gone = self.loop.create_future()
        if self.ka is not None:
            self.stop_keepalive()
        dead = self.pool_member
        if dead is not None:
            self.pool_member = None
            if self.live is not None:
                self.live.discard(dead.col, self)
            self.pool.release(dead)
        if len(self.held) >= self.rc.buffer:
            self.client.pause_reading(PAUSE)
        event(logging.INFO, "member lost: reconnecting the member leg", client=self.client.address,
              member=self.member_addr, held_bytes=len(self.held), deadline=self.rc.deadline)
        self.rtask = self.loop.create_task(self._run(dead))
        return True

    def on_eof(self, ep) -> bool:
        if ep is not self.client and ep is not self.member:
            ep.close()  # a member connection already replaced
            return False
        return super().on_eof(ep)

    def on_lost(self, ep, exc) -> None:
        if ep is self.old_member:
            old_gone = self.old_gone
            if old_gone is not None and not old_gone.done():
                old_gone.set_result(None)
            if ep is not self.member:
                return  # replaced already
        super().on_lost(ep, exc)

    def _maybe_done(self) -> None:
        super()._maybe_done()
        if self.done.done() and self.rtask is not None and not self.rtask.done():
            self.rtask.cancel()

    def _abandoned(self) -> bool:
        """The client closed, left, or the proxy closed it while we looked for a member."""
        return bool(self.done.done() or self.client_sent_close or self.closed_to_client or self.ended & _C
                    or self.shut & _C or self.c2u_broken)

    async def _run(self, dead) -> None:
        loop = self.loop
        deadline = loop.time() + self.rc.deadline
        avoid_dead = dead is not None
        failures: list[str] = []
        try:
            while not self._abandoned():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                up = None
                try:
                    async with asyncio.timeout(remaining):
                        up = await connect_to_pool(
                            self.pool, None, reuse=False, proxy_header=self.proxy_header, loop=loop,
                            on_selected=(lambda m, _attempt: m is not dead) if avoid_dead else None)
                        hs = _Handshake(loop)
                        ep = up.endpoint
                        ep.sink = hs
                        ep.write(self.request_head)
                        rh = await hs.future
                        check_server_accept(self.ws_key, rh)
                        if rh.get("sec-websocket-extensions"):
                            raise HandshakeError(502, "the new member negotiated an extension")
                        if rh.get("sec-websocket-protocol") != self.subprotocol:
                            raise HandshakeError(502, "the new member chose another subprotocol")
                        if not self.gone & _M:  # the old leg must be closed before the new one is used
                            self.old_member.abort()
                            await self.old_gone
                        if ep.closed or ep.transport.is_closing():
                            raise HandshakeError(502, "the new member closed right after its 101")
                except (UpstreamError, HandshakeError, TimeoutError, OSError) as exc:
                    if up is not None:
                        up.endpoint.abort()
                        self.pool.release(up.member)
                    failures.append(getattr(exc, "reason", None) or exc.__class__.__name__)
                    avoid_dead = False
                    if self._abandoned() or loop.time() >= deadline:
                        break
                    await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))
                    continue
                except BaseException:
                    if up is not None:
                        up.endpoint.abort()
                        self.pool.release(up.member)
                    raise
                if self._abandoned():
                    up.endpoint.abort()
                    self.pool.release(up.member)
                    break
                self._reattach(up.member, up.endpoint, hs.leftover)
                return
        except asyncio.CancelledError:
            self.reconnecting = False
            raise
        self._give_up("no member took the WebSocket within %gs%s" % (
            self.rc.deadline, (" (" + failures[-1] + ")") if failures else ""))

    def _give_up(self, why: str) -> None:
        self.reconnecting = False
        self.reconnect_off = why
        self.client.resume_reading(PAUSE)
        event(logging.INFO, "member lost: reconnect failed", client=self.client.address, reason=why)
        if not (self.done.done() or self.closed_to_client or self.ended & _C):
            first = self.closed_by is None
            self._member_lost(self.lost_exc)  # Close 1014 (also the answer to a client's Close)
            if first:
                self.reason = (self.reason or "") + "; " + why
        self._shut(self.client)
        self._maybe_done()

    def _reattach(self, member, ep, leftover: bytes) -> None:
        """The new member took the handshake: its leg replaces the dead one, the held bytes
        go to it, and relaying goes on."""
        self.reconnecting = False
        self.reconnects += 1
        self.pool_member = member
        self.member_addr = str(member.addr)
        if self.live is not None:
            self.live.add(member.col, self)
        self.member = ep
        ep.sink = self
        self.ended &= ~_M
        self.shut &= ~_M
        self.gone &= ~_M
        # The new leg, as RelayCore.attach makes one (the core keeps its old, closed leg: its
        # fd is -1, so its writes to the member go through self.member).
        leg = self.Leg(self, ep, False)
        try:
            self.member_leg = leg  # the pure core's slot; the compiled core's is read-only
        except AttributeError:
            pass
        transport = ep.transport
        transport.set_protocol(leg)
        transport.set_write_buffer_limits(0 if transport.get_extra_info("sslcontext") is None else 1, 0)  # (TLS: 1)
        if transport.get_write_buffer_size() and not leg.pending:
            leg.pause_writing()
        ep.resume_all_reading()
        if self.client_leg is not None and self.client_leg.pending:
            ep.pause_reading(PEER)
        replay = bytes(self.held)
        gap = self.c2u.bytes_in - self.lost_at  # client bytes held while no member was there
        if leftover:  # frames the new member sent right after its 101: relayed, not an answer
            _speedups.RelayCore.on_data(self, ep, leftover)
        ep.write(replay)
        self.bytes_in += gap
        self.in_at_reply = self.bytes_in - len(replay)
        self.frames_at_reply = self.c2u.frames - self._held_frames()
        if not leg.pending:
            self.client.resume_reading(PEER)  # the dead leg's unsent bytes paused it
        self.client.resume_reading(PAUSE)
        if self.ka_saved is not None and self.ka is not None and self.sweeper is not None:
            ka = self.ka
            ka.interval, ka.timeout = self.ka_saved
            ka.want = ka.heard = ka.answered = 0
            ka.deadline_client = ka.deadline_member = 0.0
            ka.due_client = ka.due_member = keepalive.first_due(self.loop.time(), ka.interval)
            self.sweeper.keepalive.add(self)
        event(logging.INFO, "member lost: reconnected", client=self.client.address, member=self.member_addr,
              replayed_bytes=len(replay), reconnects=self.reconnects)
