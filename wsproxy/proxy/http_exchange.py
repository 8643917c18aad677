"""HttpExchange: one plain HTTP request forwarded to a member and its response streamed back.

Bodies stream in both directions and are never buffered whole: the client's body events
are written to the member as they are parsed, the member's body is written to the client
as it is parsed, and each side's write backpressure pauses the other side's reads.

Framing towards each peer is chosen here, once per message:
- request: Content-Length kept as is, or chunked re-encoded chunk by chunk;
- response: Content-Length kept; chunked re-encoded for HTTP/1.1 clients; a close-delimited
  body (or chunked to an HTTP/1.0 client) is sent close-delimited with ``Connection: close``.
"""

from __future__ import annotations

import asyncio

from wsproxy.balancing.keys import request_key
from wsproxy.balancing.pool import answer_failed
from wsproxy.config.schema import effective_proxy_protocol
from wsproxy.errors import HttpError, UpstreamError
from wsproxy.health import passive
from wsproxy.protocol import http1, proxy_header
from wsproxy.protocol.cookies import cookie_value, without_cookie
from wsproxy._speedups import rewrite_head
from wsproxy.protocol.forwarding import _CLIENT_CLAIMS, HOP_BY_HOP, forwarding_plan, hop_by_hop_names
from wsproxy.proxy.endpoint import DISCARD
from wsproxy.proxy.timers import wait_until
from wsproxy.proxy.upstream import connect_to_pool, park_key

_REQUEST_DROP = HOP_BY_HOP | _CLIENT_CLAIMS  # the usual request: untrusted peer, plain Connection
_CLIENT = "client"
_PLUGINS = "plugins"  # pause reason: member events wait for HTTP_RESPONSE plugins
_MAX_POOL_SWITCHES = 3  # reselects to another pool, per request


class Reselect(Exception):
    """LB_SELECTED said: use another pool."""

    def __init__(self, pool: str) -> None:
        super().__init__(pool)
        self.pool = pool


class PluginAbort(Exception):
    """A plugin failed under on_error = "abort" in an LB event."""

    def __init__(self, verdict) -> None:
        super().__init__(verdict.kind)
        self.verdict = verdict
_UPSTREAM = "upstream"


class MemberLost(Exception):
    """The member closed or broke the connection before its response was complete."""

    def __init__(self, reason: str, got_bytes: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.got_bytes = got_bytes


class ClientGone(Exception):
    pass


def member_request_head(session, head, *, upgrade: bool = False, drop_cookie: str | None = None,
                        drop: frozenset[str] | None = None) -> bytes:
    """The request head for the member, in one pass: the client's headers with hop-by-hop
    ones removed and X-Forwarded-*/Forwarded set for this hop, then Connection/Upgrade (an
    upgrade) or Transfer-Encoding (a chunked body, re-chunked by us). ValueError on a field
    that could split the message.

    ``drop_cookie``: the sticky cookie, which is the proxy's own and never reaches members
    (HAProxy's ``cookie ... insert indirect``). ``drop``: more lowercased names to leave out.
    """
    ctx = session.ctx
    headers, names = head.headers, head.names
    if drop_cookie is not None:
        headers = without_cookie(headers, drop_cookie)
        names = ()
    if len(names) != len(headers):  # a head built by hand, or the cookie rewritten
        names = tuple(name.lower() for name, _ in headers)
    hop = hop_by_hop_names(headers, names)
    host = head.get("host")
    # HTTP/1.0 allows no Host, but we forward as HTTP/1.1, which requires one (RFC 9112 §3.2).
    first = ("Host", str(ctx.config.bind)) if host is None else None
    trusted = ctx.trusted.contains(session.client_ip)
    claims, tail = forwarding_plan(headers, names, skip=hop, client_ip=session.client_ip, proto=ctx.proto,
                                   host=host, trusted=trusted)
    if upgrade:
        tail.append(("Connection", "Upgrade"))
        tail.append(("Upgrade", head.get("upgrade") or "websocket"))
    elif head.chunked:
        tail.append(("Transfer-Encoding", "chunked"))
    dropped = _REQUEST_DROP if hop is HOP_BY_HOP and claims is _CLIENT_CLAIMS else hop | claims
    if drop:
        dropped = dropped | drop
    return rewrite_head(http1.request_line(head.method, head.target), headers, names, dropped, tail, first)


class HttpExchange:
    def __init__(self, session, head, route, pool, started: float) -> None:
        self.session = session
        self.client = session.ep
        self.head = head
        self.route = route
        self.pool = pool
        self.started = started
        self.loop = session.loop
        self.up = None
        self.parser: http1.ResponseParser | None = None
        self.head_future: asyncio.Future | None = None
        self.done_future: asyncio.Future | None = None
        self.got_response_bytes = False
        self.interim = False
        self.response_head = None
        self.status: int | None = None
        self.to_client = "length"  # "length" | "chunked" | "close" | "none"
        self.keep_alive = head.keep_alive
        self.request_complete = False
        self.client_gone = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.has_body = head.chunked or bool(head.content_length)
        self.body_attached = False
        self.member_addr: str | None = None
        self.queued: asyncio.Future | None = None  # waiting for a slot in the pool's queue
        self.proxy_protocol = effective_proxy_protocol(session.cfg, pool.config)
        self.pick: str | None = None  # how the member was chosen, for the access log
        self.plugins = session.plugins  # plugin_hooks.ConnectionPlugins or None
        self.held: list | None = None  # member events held while HTTP_RESPONSE plugins run
        self.pool_switches = 0  # LB_FAILED / LB_SELECTED "reselect" to another pool
        sticky = pool.sticky
        # The member the request's sticky cookie names (None: no cookie, forged or stale).
        self.sticky_member = sticky.member_for(cookie_value(head.headers, sticky.name)) if sticky else None

    # -- the exchange -----------------------------------------------------------------
    async def run(self) -> bool:
        """Forward the request, stream the response; True if the client connection stays open."""
        if not await self.forward_request():
            return False
        return await self.stream_response()

    def member_request_head(self) -> bytes:
        return member_request_head(self.session, self.head, drop_cookie=self._sticky_name())

    def _sticky_name(self) -> str | None:
        return self.pool.sticky.name if self.pool.sticky is not None else None

    def sticky_headers(self) -> list[tuple[str, str]]:
        """Set-Cookie for a request the balancer placed (no valid cookie, or its member was
        down or full); with Max-Age, on every response, so the expiry slides."""
        sticky = self.pool.sticky
        member = self.up.member if self.up is not None else None
        if sticky is None or member is None:
            return []
        if member is self.sticky_member and sticky.max_age is None:
            return []
        return [sticky.header(member, secure=self.session.ctx.proto == "https")]

    def _connect_args(self) -> dict:
        session, pool = self.session, self.pool
        key = request_key(pool.config.hash_key, client_ip=session.client_ip, head=self.head)
        header = None
        if self.proxy_protocol is not None:
            # peer/local: the client and the address it connected to, as announced by a
            # trusted front balancer under accept_proxy, else the TCP connection's own.
            header = proxy_header.build(self.proxy_protocol, session.ep.peer, session.ep.local)
        args = {"key": key, "prefer": self.sticky_member, "proxy_header": header, "on_queued": self._on_queued}
        routing = session.routing
        if routing is not None:
            if routing.member is not None:
                # ctx:use_member: preferred like a sticky cookie's member (balanced normally
                # when it is gone or full); strict: that member or 503.
                member = pool.member_named(routing.member)
                if routing.strict and (member is None or not pool.available(member)):
                    raise UpstreamError(503, "a plugin chose member %s of pool %s, which is %s" % (
                        routing.member, pool.name, "not in the pool" if member is None else "not available"))
                if member is not None:
                    args["prefer"] = member
            if routing.hash_key is not None:
                args["plugin_key"] = routing.hash_key
        if self.plugins is not None and self.plugins.chain.hooks("LB_SELECTED"):
            args["on_selected"] = self._on_selected
        if self.plugins is not None and self.plugins.chain.hooks("LB_FAILED"):
            args["on_failed"] = self._on_connect_failed
        return args

    def _on_connect_failed(self, member, attempt: int, reason: str, tried) -> bool:
        """LB_FAILED after one failed connect: True = try another member of this pool;
        ``Reselect`` = move to another pool; a respond/abort verdict stops here."""
        verdict = self.plugins.failed(self.pool.name, str(member.addr), attempt, reason, tried)
        if verdict is None:
            return False
        if verdict.kind == "reselect":
            if verdict.pool is not None and verdict.pool != self.pool.name:
                raise Reselect(verdict.pool)
            return True
        raise PluginAbort(verdict)

    def _on_selected(self, member, attempt: int) -> bool:
        """LB_SELECTED: False to pick again (another member); ``Reselect`` to change pools."""
        verdict = self.plugins.selected(self.pool.name, str(member.addr), attempt)
        if verdict is None:
            return True
        if verdict.kind == "reselect":
            if verdict.pool is not None and verdict.pool != self.pool.name:
                raise Reselect(verdict.pool)
            return False
        raise PluginAbort(verdict)

    def _switch_pool(self, name: str) -> bool:
        """Move this request to pool ``name`` (a plugin's reselect); False when impossible."""
        pool = self.session.ctx.pools.get(name)
        self.pool_switches += 1
        if pool is None or self.pool_switches > _MAX_POOL_SWITCHES:
            return False
        self.pool = pool
        self.proxy_protocol = effective_proxy_protocol(self.session.cfg, pool.config)
        sticky = pool.sticky
        self.sticky_member = sticky.member_for(cookie_value(self.head.headers, sticky.name)) if sticky else None
        self.session.routing = None  # the choices were about the old pool
        return True

    def _lb_failed(self, reason: str, detail: str, status: int | None = None) -> str | None:
        """LB_FAILED: "retry" after switching pools, "answered" when a plugin answered,
        None to answer as usual."""
        if self.plugins is None:
            return None
        verdict = self.plugins.failed(self.pool.name, self.member_addr, self.pool_switches + 1, reason, status=status)
        if verdict is None:
            return None
        if verdict.kind == "reselect" and verdict.pool is not None:
            if self._switch_pool(verdict.pool):
                return "retry"
            self._fail(502, "%s; a plugin reselected pool %r, which %s" % (
                detail, verdict.pool, "does not exist" if verdict.pool not in self.session.ctx.pools
                else "was tried too often"))
            return "answered"
        if verdict.kind == "reselect":
            return None  # the same pool again: nothing new to try
        self.session.plugin_answer(verdict, head=self.head, route=self.route, pool=self.pool.name,
                                   started=self.started)
        return "answered"

    def _how_picked(self, key: bytes | None) -> str:
        """"cookie" (its sticky cookie's member), "queue" (the first slot freed), "hash_fallback"
        (balance = "hash" but no key), else the pool's balancer."""
        if self.up.member is self.sticky_member:
            return "cookie"
        if self.up.queued:
            return "queue"
        balance = self.pool.config.balance
        return "hash_fallback" if balance == "hash" and key is None else balance

    def _on_queued(self, future: asyncio.Future) -> None:
        self.queued = future
        if self.client_gone:
            future.set_exception(ClientGone())
        else:
            self.session.watch_for_hangup()

    async def forward_request(self) -> bool:
        """Connect (with retries), send the head, wait for the response head.

        False means the client has been answered (502/503/504) or is gone.
        """
        session = self.session
        reuse = True
        while True:
            cfg = self.pool.config
            try:
                connect_args = self._connect_args()
                self.up = await connect_to_pool(self.pool, session.ctx.state.idle, reuse=reuse, loop=self.loop,
                                                **connect_args)
            except UpstreamError as exc:
                # Failed connects were each reported to LB_FAILED as they happened; a pool
                # with no member to offer is reported now.
                then = self._lb_failed("no_member", exc.reason) if exc.status == 503 else None
                if then == "retry":
                    continue
                if then == "answered":
                    return False
                extra = (("Retry-After", str(exc.retry_after)),) if exc.retry_after and exc.status == 503 else ()
                self._fail(exc.status, exc.reason, extra_headers=extra)
                return False
            except Reselect as switch:
                if self._switch_pool(switch.pool):
                    continue
                self._fail(502, "a plugin reselected pool %r, which does not exist or was tried too often"
                           % switch.pool)
                return False
            except PluginAbort as stop:
                self.session.plugin_answer(stop.verdict, head=self.head, route=self.route, pool=self.pool.name,
                                           started=self.started)
                return False
            except ClientGone:
                self._log(None, "client closed while the request waited in the queue")
                return False
            finally:
                self.queued = None
            self.pick = self._how_picked(connect_args["key"])
            if self.client_gone:
                self._finish_upstream(reusable=False)
                self._log(None, "client closed before the request was sent")
                return False
            self.member_addr = str(self.up.member.addr)
            if session.metrics_token is not None:
                session.ctx.state.metrics.member_connection(self.pool.name, self.member_addr)
            if self.plugins is not None:
                self.plugins.routed(self.pool.name, self.member_addr)  # ctx.pool / ctx.member
            self._start_response()
            ep = self.up.endpoint
            ep.sink = self
            ep.write(self.member_request_head())
            if not self.body_attached:
                self.body_attached = True
                session.attach_body(self)
            try:
                await wait_until(self.loop, self.head_future, self.loop.time() + cfg.response_timeout)
                break
            except TimeoutError:
                if self.head.is_upgrade:  # passive health; a plain request may be a long poll
                    self._answer_failed("no response within %gs" % cfg.response_timeout)
                self._finish_upstream(reusable=False)
                self._fail(504, "member %s sent no response within %gs" % (self.member_addr, cfg.response_timeout))
                return False
            except ClientGone:
                self._finish_upstream(reusable=False)
                self._log(None, "client closed before the response")
                return False
            except MemberLost as exc:
                reused = self.up.reused
                if not reused or exc.got_bytes:  # else maybe a parked connection gone stale
                    self._answer_failed(exc.reason)
                self._finish_upstream(reusable=False)
                if reused and not exc.got_bytes and not self.has_body:
                    reuse = False  # a parked connection went stale: retry once on a fresh one
                    continue
                self._fail(502, "member %s: %s" % (self.member_addr, exc.reason))
                return False
            except HttpError as exc:
                self._answer_failed("invalid response: %s" % exc.reason)
                self._finish_upstream(reusable=False)
                self._fail(502, "member %s sent an invalid response: %s" % (self.member_addr, exc.reason))
                return False
        self._answer_verdict()
        return True

    # -- passive health: the member's answer counts for or against it (balancing/pool.py) --
    def _answer_verdict(self) -> None:
        up, status = self.up, self.response_head.status
        if answer_failed(status, self.head.is_upgrade):
            passive.answer_failed(up.pool, up.member, "answered %d%s" % (
                status, " to an upgrade" if self.head.is_upgrade else ""))
        else:
            passive.answer_ok(up.pool, up.member)

    def _answer_failed(self, reason: str) -> None:
        if self.up is not None:
            passive.answer_failed(self.up.pool, self.up.member, reason)

    async def _respond_after_plugins(self) -> bool:
        """HTTP_RESPONSE plugins edit the head; then it goes out and the held events follow.
        False when a plugin failed under on_error = "abort" (the client got a 500)."""
        rh = self.response_head
        verdict = await self.plugins.response(rh)
        if verdict is not None:
            self._finish_upstream(reusable=False)
            self.session.plugin_answer(verdict, head=self.head, route=self.route, pool=self.pool.name,
                                       started=self.started)
            return False
        held, self.held = self.held, None
        self._response_head(rh)
        self._deliver(held)
        if self.up is not None:
            self.up.endpoint.resume_reading(_PLUGINS)
        return True

    async def stream_response(self) -> bool:
        """The head is on its way to the client; the body streams from on_data."""
        if self.held is not None and not await self._respond_after_plugins():
            return False
        try:
            await self.done_future
        except (MemberLost, HttpError) as exc:
            reason = exc.reason if hasattr(exc, "reason") else str(exc)
            self._finish_upstream(reusable=False)
            self.client.close()  # the client sees a truncated body, never a wrong one
            self._log(self.status, "member %s broke off the response: %s" % (self.member_addr, reason))
            return False
        except ClientGone:
            self._finish_upstream(reusable=False)
            self._log(self.status, "client closed during the response")
            return False
        keep = self.keep_alive and self.request_complete and not self.client_gone
        self._finish_upstream(reusable=self._upstream_reusable())
        self._log(self.status, None)
        if not keep:
            self.client.close()
        return keep

    def _start_response(self) -> None:
        self.parser = http1.ResponseParser()
        if self.head.method == "HEAD":
            self.parser.expect_head_response()
        self.head_future = self.loop.create_future()
        self.done_future = self.loop.create_future()
        self.got_response_bytes = False

    def _upstream_reusable(self) -> bool:
        rh = self.response_head
        return (rh is not None and self.request_complete and rh.keep_alive
                and not getattr(rh, "body_until_close", False))

    def _finish_upstream(self, *, reusable: bool) -> None:
        up = self.up
        if up is None:
            return
        self.pool.release(up.member)
        ep = up.endpoint
        self.client.resume_reading(_UPSTREAM)
        # A connection that began with a PROXY header names this client: never park it.
        if reusable and self.proxy_protocol is None and not ep.closed and not self.session.ctx.state.draining:
            cfg = self.pool.config
            self.session.ctx.state.idle.put(park_key(up.pool, up.member), ep, cfg.keepalive_conns,
                                            cfg.keepalive_timeout)
        else:
            ep.sink = DISCARD
            ep.abort()
        self.up = None

    def _fail(self, status: int, reason: str, extra_headers=()) -> None:
        self.session.fail(status, reason, head=self.head, route=self.route, pool=self.pool.name,
                          member=self.member_addr, started=self.started, extra_headers=extra_headers)

    def _log(self, status, reason) -> None:
        self.session.log_http(self.head, status, route=self.route, pool=self.pool.name, member=self.member_addr,
                              reason=reason, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                              started=self.started, pick=self.pick)

    # -- client side: body events and transport callbacks -------------------------------
    def client_event(self, ev) -> None:
        ep = self.up.endpoint if self.up is not None else None
        if isinstance(ev, http1.Body):
            self.bytes_in += len(ev.data)
            if ep is not None:
                ep.write(http1.encode_chunk(ev.data) if self.head.chunked else ev.data)
        else:  # EndOfMessage
            self.request_complete = True
            if ep is not None and self.head.chunked:
                ep.write(http1.LAST_CHUNK)

    def client_eof(self) -> None:
        if not self.request_complete:
            self._client_gone()

    def client_lost(self, exc) -> None:
        self._client_gone()

    def _client_gone(self) -> None:
        self.client_gone = True
        for fut in (self.queued, self.head_future, self.done_future):
            if fut is not None and not fut.done():
                fut.set_exception(ClientGone())
                fut.exception()  # mark retrieved: only one of them is awaited

    def client_pause_writing(self) -> None:
        if self.up is not None:
            self.up.endpoint.pause_reading(_CLIENT)

    def client_resume_writing(self) -> None:
        if self.up is not None:
            self.up.endpoint.resume_reading(_CLIENT)

    def shutdown(self) -> None:
        self.keep_alive = False  # finish this response, then close

    # -- member side: sink for the upstream endpoint ----------------------------------
    def on_data(self, ep, data: bytes) -> None:
        self.got_response_bytes = True
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            self._member_failed(exc)
            return
        self._deliver(events)

    def _deliver(self, events) -> None:
        if self.held is not None:  # HTTP_RESPONSE plugins are running: keep the order
            self.held.extend(events)
            return
        for i, ev in enumerate(events):
            if (isinstance(ev, http1.ResponseHead) and ev.status >= 200 and self.plugins is not None
                    and self.plugins.chain.hooks("HTTP_RESPONSE")):
                self.held = list(events[i + 1:])  # released by _respond_after_plugins
                self.up.endpoint.pause_reading(_PLUGINS)
                self.response_head = ev
                if not self.head_future.done():
                    self.head_future.set_result(ev)
                return
            if isinstance(ev, http1.Body):
                if self.to_client == "chunked":
                    self._to_client(http1.encode_chunk(ev.data))
                elif self.to_client != "none":
                    self._to_client(ev.data)
            elif isinstance(ev, http1.ResponseHead):
                if ev.status == 101:
                    self._switching(ev)
                elif ev.status < 200:  # 100 Continue, 103 Early Hints: relay, keep waiting
                    self._to_client(http1.serialize_response_head(ev.status, ev.reason, ev.headers))
                    self.interim = True  # its EndOfMessage ends the 1xx, not the response
                else:
                    self._response_head(ev)
            elif isinstance(ev, http1.EndOfMessage):
                if self.interim:
                    self.interim = False
                    continue
                if self.to_client == "chunked":
                    self._to_client(http1.LAST_CHUNK)
                if not self.done_future.done():
                    self.done_future.set_result(None)
            elif isinstance(ev, http1.Upgrade):
                self._upgraded(ev.leftover)

    def _switching(self, rh) -> None:
        self._member_failed(HttpError(502, "member answered 101 to a request that asked for no upgrade"))

    def _upgraded(self, leftover: bytes) -> None:
        pass  # only a WebSocket exchange expects this

    def _response_head(self, rh) -> None:
        self.response_head = rh
        self.status = rh.status
        tail = []
        client_11 = self.head.version != "1.0"
        if self.head.method == "HEAD" or rh.status in (204, 304):
            self.to_client = "none"
        elif rh.chunked and client_11:
            self.to_client = "chunked"
            tail.append(("Transfer-Encoding", "chunked"))
        elif rh.content_length is not None and not rh.chunked:
            self.to_client = "length"
        else:
            self.to_client = "close"
        if self.to_client == "close" or self.session.ctx.state.draining:
            self.keep_alive = False
        if not self.keep_alive:
            tail.append(("Connection", "close"))
        elif not client_11:
            tail.append(("Connection", "keep-alive"))
        tail += self.sticky_headers()
        hsts = self.session.ctx.hsts
        if hsts and rh.get("strict-transport-security") is None:  # a member's own policy wins
            tail += hsts
        self._to_client(http1.response_head_for_client(rh, tail))
        if not self.head_future.done():
            self.head_future.set_result(rh)

    def _to_client(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client.write(data)

    def _member_failed(self, exc: Exception) -> None:
        for fut in (self.head_future, self.done_future):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()

    def on_eof(self, ep) -> bool:
        try:
            events = self.parser.feed_eof()
        except HttpError as exc:
            self._member_failed(MemberLost(exc.reason, self.got_response_bytes))
            return False
        self._deliver(events)
        self._member_failed(MemberLost("member closed the connection", self.got_response_bytes))
        return False

    def on_lost(self, ep, exc) -> None:
        why = "connection lost: %s" % exc if exc else "member closed the connection"
        self._member_failed(MemberLost(why, self.got_response_bytes))

    def on_pause_writing(self, ep) -> None:
        self.client.pause_reading(_UPSTREAM)

    def on_resume_writing(self, ep) -> None:
        self.client.resume_reading(_UPSTREAM)
