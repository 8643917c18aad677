"""WebSocketExchange: the upgrade handshake forwarded to a member, then the relay.

The client's handshake is validated here (RFC 6455 §4.2.1), the member's 101 is checked
(Sec-WebSocket-Accept must match the key the client sent), and bytes either side sent
right after its head are kept and handed to the relay, never lost. A member that answers
anything but 101 has its response relayed as the plain HTTP response it is.
"""

from __future__ import annotations

import logging
import time

from wsproxy.config.schema import RouteConfig, ws_limits
from wsproxy.errors import HandshakeError
from wsproxy.logs import access, event
from wsproxy.protocol import http1, proxy_header
from wsproxy.protocol.handshake import (check_server_accept, negotiated_rsv, origin_allowed,
                                        validate_client_handshake)
from wsproxy.proxy.http_exchange import HttpExchange, member_request_head
from wsproxy._speedups import build_frame
from wsproxy.proxy.inspect_relay import InspectRelay
from wsproxy.scripting.events import OPCODES
from wsproxy.proxy.reconnect import ReconnectRelay
from wsproxy.proxy.relay import WsRelay

_EXTENSIONS = frozenset({"sec-websocket-extensions"})
_DEFAULT_LIMITS = ws_limits(RouteConfig(0, ""), None)
_limits_warned: set[str] = set()  # routes whose pool's limits were reported as not applied


def _limits_ignored(route: str, limits) -> None:
    """A WebSocket of ``route`` got a raw relay although its pool sets message limits: say so
    once (config/validate.py refuses limits set on a raw route itself)."""
    if route not in _limits_warned:
        _limits_warned.add(route)
        event(logging.WARNING, 'max_message_size, max_frame_size and validate_utf8 ignored: they need relay = '
              '"track" or "inspect", and this route\'s relay is raw', route=route,
              max_message_size=limits.max_message_size, max_frame_size=limits.max_frame_size,
              validate_utf8=limits.validate_utf8)


def _relay_mode(route, chain, pool_config) -> str:
    """The relay mode: inspect when a plugin hooks frames on this listener, else the
    route's own mode, else its pool's (config.schema.effective_relay)."""
    if chain is not None and chain.frame_events:
        return "inspect"
    return route.relay or pool_config.relay


def _send_before_start(relay, outcome) -> None:
    """WS_OPEN's ``ctx:send``s on a track/raw relay: nothing has been relayed yet, so both
    streams are at a frame boundary; our messages go out before anything either peer sent."""
    if outcome is None or outcome.actions is None:
        return
    for to, data, opcode in outcome.actions.sends:
        op = OPCODES.get(opcode, 1)
        if to == "client":
            relay.client.write(build_frame(op, data, mask=False))
        else:
            relay.member.write(build_frame(op, data, mask=True))


def _apply_ws_open(relay, outcome) -> None:
    """WS_OPEN's outcome on a track/raw relay: a close (verdict, ctx:close or a failed
    plugin under on_error = "abort") closes both legs."""
    if outcome is None:
        return
    close = None
    if outcome.actions is not None and outcome.actions.close is not None:
        close = outcome.actions.close
    verdict = outcome.verdict
    if verdict is not None and verdict.kind == "close":
        close = (verdict.code, verdict.reason)
    elif verdict is not None and verdict.kind == "abort":
        close = (1011, "plugin error")
    if close is not None:
        relay.close_both(close[0], close[1])


class WebSocketExchange(HttpExchange):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.switched = False
        self.member_leftover = bytearray()
        self.keep_alive = False  # the client's parser stopped at the upgrade head

    @property
    def inspect(self) -> bool:
        """Frames go through InspectRelay: relay = "inspect", or a plugin hooks frames here."""
        chain = self.plugins.chain if self.plugins is not None else None
        return _relay_mode(self.route, chain, self.pool.config) == "inspect"

    def member_request_head(self) -> bytes:
        # On inspect routes permessage-deflate is not offered to the member (inspect_relay.py):
        # plugins read plaintext, and a replaced message needs no compression state.
        strip = _EXTENSIONS if self.inspect else None
        return member_request_head(self.session, self.head, upgrade=True, drop_cookie=self._sticky_name(),
                                   drop=strip)

    async def run(self) -> bool:
        head, route = self.head, self.route
        try:
            validate_client_handshake(head)
        except HandshakeError as exc:
            # A malformed handshake is a bad request; 426 (another protocol version) is not hostile.
            self.session.fail(exc.status, exc.reason, head=head, route=route, pool=self.pool.name,
                              started=self.started, extra_headers=exc.headers,
                              rejection="bad_request" if exc.status == 400 else None)
            return False
        if route.allowed_origins and not origin_allowed(head.get("origin"), route.allowed_origins):
            # Cross-site WebSocket hijacking: a browser on another site (handshake.origin_allowed).
            self.session.fail(403, "origin %r is not allowed on %s" % (head.get("origin"), route.label), head=head,
                              route=route, pool=self.pool.name, started=self.started, rejection="origin")
            return False
        while True:
            if not await self.forward_request():
                return False
            rh = self.response_head
            if rh.status == 101:
                break
            # LB_FAILED (reason "status"): a plugin may send the upgrade to another pool.
            then = self._lb_failed("status", "member %s answered %d" % (self.member_addr, rh.status), rh.status)
            if then == "retry":
                self.held = None
                self._finish_upstream(reusable=False)
                continue
            if then == "answered":
                self.held = None
                self._finish_upstream(reusable=False)
                return False
            return await self.stream_response()
        try:
            check_server_accept(head.get("sec-websocket-key"), rh)
        except HandshakeError as exc:
            self._finish_upstream(reusable=False)
            self._fail(502, "member %s: %s" % (self.member_addr, exc.reason))
            return False
        if self.plugins is not None:
            verdict = await self.plugins.response(rh)  # HTTP_RESPONSE sees the 101 too
            if verdict is not None:
                self._finish_upstream(reusable=False)
                self.session.plugin_answer(verdict, head=head, route=route, pool=self.pool.name,
                                           started=self.started)
                return False
            self.plugins.routed(self.pool.name, self.member_addr)
        relay = self._start_relay(rh)
        if self.plugins is None:
            self._begin(relay)
            return False
        # WS_OPEN runs before the relay starts: until then both sides' bytes wait in the
        # session's and this exchange's buffers, so no frame passes the plugins unseen.
        if isinstance(relay, InspectRelay):
            await relay.plugins_open(self.plugins)
            self._begin(relay)
        else:
            outcome = await self.plugins.ws_open()
            _send_before_start(relay, outcome)
            self._begin(relay)
            _apply_ws_open(relay, outcome)
        return False

    def _begin(self, relay) -> None:
        session = self.session
        relay.start(session.take_raw(), bytes(self.member_leftover), client_eof=session.eof)
        self.member_leftover.clear()

    def _start_relay(self, rh):
        """Send the 101 and hand both connections to a WsRelay that lives on its own.

        The session, this exchange, the parsers and the heads are dropped once this returns
        (the session task ends): an idle WebSocket then costs only the relay, its two
        endpoints and the strings of its access-log line.
        """
        tail = [("Upgrade", "websocket"), ("Connection", "Upgrade"), *self.sticky_headers()]
        self._to_client(http1.response_head_for_client(rh, tail))
        cfg = self.pool.config
        route = self.route
        session = self.session
        idle = route.ws_idle_timeout if route.ws_idle_timeout is not None else cfg.ws_idle_timeout
        rc = route.reconnect if route.reconnect is not None else cfg.reconnect
        reconnect_off = None
        if rc is not None:  # proxy/reconnect.py; Close 1014 on a lost member where it cannot apply
            if self.inspect:
                reconnect_off = "inspect relay"
            elif (route.relay or cfg.relay) != "track":
                reconnect_off = "raw relay"
            elif rh.get("sec-websocket-extensions"):
                reconnect_off = "extension negotiated"
        limits = ws_limits(route, cfg)  # max_message_size, max_frame_size, validate_utf8
        if self.inspect:
            relay = InspectRelay(self.client, self.up.endpoint, rsv=negotiated_rsv(rh), idle_timeout=idle,
                                 sweeper=session.ctx.state.sweeper, plugins=self.plugins, limits=limits)
        elif rc is not None and reconnect_off is None:
            relay = ReconnectRelay(
                self.client, self.up.endpoint, rc=rc, pool=self.pool, pool_member=self.up.member,
                request_head=self.member_request_head(), ws_key=self.head.get("sec-websocket-key"),
                subprotocol=rh.get("sec-websocket-protocol"),
                proxy_header=(proxy_header.build(self.proxy_protocol, session.ep.peer, session.ep.local)
                              if self.proxy_protocol is not None else None),
                live=session.ctx.state.live, rsv=0, idle_timeout=idle, sweeper=session.ctx.state.sweeper,
                limits=limits)
        else:
            relay = WsRelay(self.client, self.up.endpoint, mode=route.relay or cfg.relay, rsv=negotiated_rsv(rh),
                            idle_timeout=idle, sweeper=session.ctx.state.sweeper, limits=limits)
            if not relay.track and limits != _DEFAULT_LIMITS:
                _limits_ignored(route.label, limits)
        # Violations are reported with the listener and the route, and counted (proxy/relay.py).
        relay.listener, relay.route, relay.metrics = session.cfg.name, route.label, session.ctx.state.metrics
        # Keep-alive (proxy/keepalive.py): the route's ping_interval/pong_timeout, else the pool's.
        ping_interval = route.ping_interval if route.ping_interval is not None else cfg.ping_interval
        if ping_interval > 0 and not relay.use_keepalive(
                ping_interval, route.pong_timeout if route.pong_timeout is not None else cfg.pong_timeout):
            session.ctx.state.sweeper.keepalive.ignored(route.label, ping_interval)  # a raw relay
        session.hand_off(relay)
        plugins = self.plugins
        pool, member = self.pool, self.up.member
        self.up = None
        line = {
            "kind": "ws",
            "client": self.client.address,
            "listener": session.cfg.name,
            "route": route.label,
            "pool": pool.name,
            "member": self.member_addr,
            "pick": self.pick,
            "method": self.head.method,
            "path": self.head.target,
            "status": 101,
        }
        head_bytes, started = self.bytes_out, self.started
        sessions = session.ctx.state.sessions
        sessions.add(relay)  # shutdown reaches it there (relay.shutdown, relay.task, relay.ep)
        # Drain and rebalance reach it through the process's live registry (node/live.py).
        live = session.ctx.state.live
        col = member.col if live is not None else None
        if col is not None:
            live.add(col, relay)
        # Metrics (node/metrics.py): the 101 and the session now; at the end its frames,
        # bytes and Close code, and the end of the client connection the session had.
        metrics, conn_token = session.ctx.state.metrics, session.metrics_token
        ws_token = metrics.ws_opened(conn_token, pool.name, self.member_addr) if conn_token is not None else None

        if reconnect_off is not None:
            line["reconnect_off"] = reconnect_off
        reconnecting = isinstance(relay, ReconnectRelay)

        def finished(_done) -> None:
            sessions.discard(relay)
            if reconnecting:  # the member it holds now (None: lost, none found)
                held = relay.pool_member
                if held is not None:
                    if col is not None:
                        live.discard(held.col, relay)
                    pool.release(held)
            else:
                if col is not None:
                    live.discard(col, relay)
                pool.release(member)
            if plugins is not None:
                plugins.close()  # CLIENT_CLOSED: the session handed it to us
            if ws_token is not None:
                metrics.ws_closed(conn_token, ws_token, relay)
            lost = relay.lost_in_flight
            if lost is not None:
                line["unanswered_frames"], line["unanswered_bytes"] = lost
                if ws_token is not None:
                    metrics.member_lost(ws_token, lost[0] or 0, lost[1])
            if reconnecting:
                line["reconnects"] = relay.reconnects
                line["last_member"] = relay.member_addr
                if relay.reconnect_off is not None:
                    line["reconnect_off"] = relay.reconnect_off
            access({
                **line,
                "bytes_in": relay.bytes_in,
                "bytes_out": relay.bytes_out + head_bytes,
                "frames_in": relay.c2u.frames if relay.c2u is not None else None,
                "frames_out": (relay.u2c.frames + (relay.frames_out_before if reconnecting else 0)
                               if relay.u2c is not None else None),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "close_code": relay.close_code,
                "closed_by": relay.closed_by,
                "reason": relay.reason,
            })

        relay.done.add_done_callback(finished)
        return relay

    # -- member side during the handshake --------------------------------------------
    def _switching(self, rh) -> None:
        self.response_head = rh
        self.status = 101
        self.switched = True
        if not self.head_future.done():
            self.head_future.set_result(rh)

    def _upgraded(self, leftover: bytes) -> None:
        self.member_leftover += leftover

    def on_data(self, ep, data: bytes) -> None:
        if self.switched:  # frames sent right after the 101, before the relay starts
            self.member_leftover += data
            return
        super().on_data(ep, data)

    def on_eof(self, ep) -> bool:
        if self.switched:
            return False  # the relay notices the closed endpoint when it starts
        return super().on_eof(ep)
