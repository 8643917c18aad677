"""ClientSession: one client connection's life, from accept to close.

It reads requests in order (pipelined ones wait their turn), enforces the head limits and
timeouts, routes each request, and hands it to an HTTP exchange or, for a WebSocket
upgrade, to the WebSocket handler, which ends the session with the relay. It is the only
place that knows the order of these steps; the steps live in their own modules.

Timers, like HAProxy's ``timeout http-request`` / ``http-keep-alive``:
- first request: its head must be complete ``head_timeout`` after the accept; a client that
  sent nothing by then is closed silently (a browser pre-connect is not an error), one that
  sent part of a head gets 408;
- later requests: ``keepalive_timeout`` of silence closes quietly; once a head has begun,
  it must complete within ``head_timeout`` (slowloris) or the client gets 408.

Refusals of hostile or broken input (400/505 bad_request, 414/431 too_large, 408 or the
silent close head_timeout, 429 handshake_rate, 403 origin) each get one log line with a
``rejection`` field and a count in ``wsproxy_rejections_total`` (``fail(rejection=...)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from http import HTTPStatus

from wsproxy.errors import HttpError
from wsproxy.logs import access, event
from wsproxy.protocol import http1
from wsproxy.protocol.handshake import is_websocket_request
from wsproxy.proxy.http_exchange import HttpExchange
from wsproxy.proxy.limits import client_key, forwarded_client, retry_after
from wsproxy.proxy.plugin_hooks import ConnectionPlugins
from wsproxy.proxy.timers import wait_until
from wsproxy.proxy.websocket import WebSocketExchange

_QUEUE = "queue"  # pause reason: parsed events wait for the session
_RAW_LIMIT = 256 * 1024  # bytes held after an upgrade head, before the relay starts


class ParseFailure:
    """A queued event: the request stream broke here (answered after earlier requests)."""

    __slots__ = ("error",)

    def __init__(self, error: HttpError) -> None:
        self.error = error


class ClientSession:
    def __init__(self, ctx, endpoint) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.ep = endpoint
        self.loop = ctx.state.loop or asyncio.get_running_loop()
        self.parser = http1.RequestParser(
            max_head_bytes=self.cfg.max_head_bytes,
            max_headers=self.cfg.max_headers,
            max_uri_bytes=self.cfg.max_uri_bytes,
        )
        self.queue: deque = deque()
        self.body_sink = None  # the exchange that takes Body/EndOfMessage of the current request
        self.upgraded = False  # the parser is done; raw bytes go to `raw`
        self.raw = bytearray()
        self.waiter: asyncio.Future | None = None
        self.eof = False
        self.lost = False
        self.head_started: float | None = None
        self.accepted_at = self.loop.time()
        self.requests = 0
        self.busy = False  # an exchange or relay is running
        self.handler = None  # current exchange or relay (gets pause/resume/lost callbacks)
        self.client_ip = endpoint.peer[0]
        self.task: asyncio.Task | None = None
        self.handed_off = False  # a WebSocket relay owns the client connection now
        chain = ctx.plugins
        # This connection's plugins (plugin_hooks.py), or None when none applies here.
        self.plugins = ConnectionPlugins(chain, self.client_ip) if chain is not None else None
        self.routing = None  # the current request's plugin routing choices (plugin_hooks.Routing)
        self.metrics_token = None  # node/metrics.py: set by start() when metrics are on
        self.last_status = None  # the status of the last answer logged (None: no answer)

    # -- sink for the client endpoint (HTTP phase) --------------------------------------
    def on_data(self, ep, data: bytes) -> None:
        if self.upgraded:
            self.raw += data
            if len(self.raw) > _RAW_LIMIT:
                ep.pause_reading(_QUEUE)
            return
        try:
            events = self.parser.feed(data)
        except HttpError as exc:
            self.queue.append(ParseFailure(exc))
            events = ()
            ep.pause_reading(_QUEUE)
        for ev in events:
            self._dispatch(ev)
        if self.head_started is None and self.parser.in_head:
            self.head_started = self.loop.time()
        if self.queue:
            ep.pause_reading(_QUEUE)
        self._wake()

    def _dispatch(self, ev) -> None:
        if isinstance(ev, http1.RequestHead):
            self.head_started = None
        elif isinstance(ev, http1.Upgrade):
            self.upgraded = True
        if self.body_sink is not None and not self.queue and isinstance(ev, (http1.Body, http1.EndOfMessage)):
            sink = self.body_sink
            if isinstance(ev, http1.EndOfMessage):
                self.body_sink = None
            sink.client_event(ev)
            return
        self.queue.append(ev)

    def on_eof(self, ep) -> bool:
        self.eof = True
        if self.handler is not None:
            self.handler.client_eof()
        self._wake()
        return True  # keep the write side open: a response may still be on its way

    def on_lost(self, ep, exc) -> None:
        self.lost = True
        self.eof = True
        if self.handler is not None:
            self.handler.client_lost(exc)
        self._wake()

    def on_pause_writing(self, ep) -> None:
        if self.handler is not None:
            self.handler.client_pause_writing()

    def on_resume_writing(self, ep) -> None:
        if self.handler is not None:
            self.handler.client_resume_writing()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- what exchanges and the WebSocket handler call -----------------------------------
    def attach_body(self, sink) -> None:
        """Route the current request's body to ``sink`` (queued parts first)."""
        while self.queue and isinstance(self.queue[0], (http1.Body, http1.EndOfMessage)):
            ev = self.queue.popleft()
            sink.client_event(ev)
            if isinstance(ev, http1.EndOfMessage):
                self._maybe_resume()
                return
        self.body_sink = sink
        self._maybe_resume()

    def take_raw(self) -> bytes:
        """After an upgrade: the bytes the client sent after its head (pipelined frames)."""
        data = b""
        if self.queue and isinstance(self.queue[0], http1.Upgrade):
            data = bytes(self.queue.popleft().leftover)
        data += bytes(self.raw)
        self.raw.clear()
        return data

    def hand_off(self, relay) -> None:
        """After a 101: the relay owns the client connection; the session ends without
        closing it, and the parser's state is freed now."""
        self.handed_off = True
        self.handler = relay
        self.parser = None

    def watch_for_hangup(self) -> None:
        """While the request waits for a member (the pool's queue), read on, so that a client
        that hangs up is noticed (its EOF ends the wait); more pipelined data pauses again."""
        self.ep.resume_reading(_QUEUE)

    def _maybe_resume(self) -> None:
        if not self.queue:
            self.ep.resume_reading(_QUEUE)

    async def wait_wake(self, timeout_at: float | None = None) -> None:
        """Wait until the endpoint delivers something (data, EOF, loss) or ``timeout_at``."""
        self.waiter = self.loop.create_future()
        try:
            if timeout_at is None:
                await self.waiter
            else:
                await wait_until(self.loop, self.waiter, timeout_at)
        finally:
            self.waiter = None

    # -- the session ---------------------------------------------------------------------
    def start(self) -> None:
        if self.plugins is not None:
            verdict = self.plugins.accepted()
            if verdict is not None:  # reject, or a plugin failed under on_error = "abort"
                event(logging.INFO, "connection rejected by a plugin", client=self.ep.address, verdict=verdict.kind)
                self.ep.abort()
                self.plugins.close()
                return
        self.ctx.state.sessions.add(self)
        metrics = self.ctx.state.metrics
        # This connection's metrics token (node/metrics.py); a WebSocket relay ends it.
        self.metrics_token = metrics.connection_opened(self.cfg.name) if metrics is not None else None
        self.task = self.loop.create_task(self.run())

    async def run(self) -> None:
        try:
            while not self.lost:
                head = await self._read_head()
                if head is None:
                    break
                self.requests += 1
                self.busy = True
                try:
                    keep_alive = await self._handle(head)
                finally:
                    self.busy = False
                    self.handler = None
                if not keep_alive or self.ctx.state.draining:
                    break
        except asyncio.CancelledError:
            pass
        except Exception:
            logging.getLogger("wsproxy").exception("session failed: client %s", self.ep.address)
        finally:
            if not self.handed_off:
                self.ep.close()
                if self.plugins is not None:
                    self.plugins.close()
                if self.metrics_token is not None:
                    self.ctx.state.metrics.connection_closed(self.metrics_token)
            self.ctx.state.sessions.discard(self)

    async def _read_head(self):
        """Wait for the next request head, applying the head and keep-alive timers."""
        idle_deadline = self.loop.time() + self.cfg.keepalive_timeout
        while True:
            if self.queue:
                ev = self.queue.popleft()
                self._maybe_resume()
            else:
                if self.eof:
                    if self.parser.in_head:
                        event(logging.INFO, "client closed mid-head", client=self.ep.address)
                    return None
                if self.requests == 0:
                    # From the accept, not the first byte: waiting before it must not buy a
                    # slow client a second head_timeout (HAProxy's timeout http-request).
                    deadline = self.accepted_at + self.cfg.head_timeout
                elif self.head_started is not None:
                    deadline = self.head_started + self.cfg.head_timeout
                else:
                    deadline = idle_deadline
                try:
                    await self.wait_wake(deadline)
                except TimeoutError:
                    if self.head_started is not None or self.parser.in_head:
                        self.fail(408, "request head not complete within %gs" % self.cfg.head_timeout,
                                  rejection="head_timeout")
                    elif self.requests == 0:  # connected and sent nothing: closed without an answer
                        self.count_rejection("head_timeout")
                        event(logging.INFO, "connection closed without a request", listener=self.cfg.name,
                              client=self.ep.address, reason="no request within %gs" % self.cfg.head_timeout,
                              rejection="head_timeout")
                    return None
                continue
            if isinstance(ev, http1.RequestHead):
                return ev
            if isinstance(ev, ParseFailure):
                status = ev.error.status
                self.fail(status, ev.error.reason, rejection="too_large" if status in (414, 431) else "bad_request")
                return None
            # A stray Body/EndOfMessage can only follow a request we already answered
            # without reading its body (e.g. a 404 with Connection: close): skip it.

    async def _handle(self, head) -> bool:
        started = time.monotonic()
        if self.cfg.redirect_https is not None:
            self.redirect_https(head, started)
            return False
        limits = self.ctx.limits
        if limits is not None and limits.rate and head.is_upgrade and is_websocket_request(head):
            # Before plugins and routing: a handshake flood costs as little as possible.
            key = self.rate_key(head)
            wait = limits.handshake(key) if key is not None else 0.0
            if wait:
                self.fail(429, "WebSocket handshakes from %s over %g/s (burst %d)" % (key, limits.rate, limits.burst),
                          head=head, started=started, extra_headers=(("Retry-After", retry_after(wait)),),
                          rejection="handshake_rate")
                return False
        routing = None
        if self.plugins is not None:
            verdict, routing = await self.plugins.request(head)
            if verdict is not None:
                self.plugin_answer(verdict, head=head, started=started)
                return False
        route = self.ctx.router.match(head.get("host"), head.path)
        if route is None:
            self.fail(404, "no route matches host %r path %r" % (head.get("host"), head.path), head=head, started=started)
            return False
        pool_name = route.pool
        if routing is not None and routing.pool is not None:
            pool_name = routing.pool
            if pool_name not in self.ctx.pools:
                self.fail(500, "a plugin chose pool %r, which does not exist" % pool_name, head=head, route=route,
                          started=started)
                return False
        self.routing = routing
        pool = self.ctx.pools[pool_name]
        if head.is_upgrade and is_websocket_request(head):
            handler = WebSocketExchange(self, head, route, pool, started)
            self.handler = handler
            self.last_status = None
            await handler.run()
            if self.metrics_token is not None and not self.handed_off:  # (a 101 is counted by the relay)
                self.ctx.state.metrics.handshake(self.metrics_token, self.last_status, handler.status)
            return False
        if head.is_upgrade:
            # An upgrade we do not proxy (h2c, ...): answer as plain HTTP would be unsafe,
            # since the parser stopped at the head. Refuse clearly.
            self.fail(501, "upgrade to %r is not supported" % head.get("upgrade"), head=head, started=started)
            return False
        exchange = HttpExchange(self, head, route, pool, started)
        self.handler = exchange
        return await exchange.run()

    def rate_key(self, head) -> str | None:
        """Whom handshake_rate_per_ip counts this request for: the client (the TCP peer, or
        the PROXY header's client); from a peer in trusted_proxies, the client its
        X-Forwarded-For names (limits.forwarded_client), and no one (None) if it names none."""
        trusted = self.ctx.trusted
        if trusted and trusted.contains(self.client_ip):
            return forwarded_client(head.get_all("x-forwarded-for"), trusted)
        return client_key(self.client_ip)

    def redirect_https(self, head, started) -> None:
        """``redirect_https`` on this listener: every request, WebSocket upgrades included,
        gets 308 Permanent Redirect to the same path and query under the configured base.
        308 rather than 301: a POST stays a POST with its body (RFC 9110 §15.4.9), and browsers
        cache it like a 301. The connection closes after it (a body is not read)."""
        target = head.target if head.target.startswith("/") else "/"
        location = self.cfg.redirect_https.rstrip("/") + target
        body = b"redirecting to https\n"
        answer = http1.serialize_response_head(308, "Permanent Redirect", [
            ("Location", location), ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))), ("Connection", "close")]) + body
        if not self.ep.closed:
            self.ep.write(answer)
        self.log_http(head, 308, bytes_out=len(answer), started=started, reason="redirect_https")
        self.eof = True
        self.ep.linger_close()

    def plugin_answer(self, verdict, *, head=None, route=None, pool=None, started=None) -> None:
        """A plugin's verdict before the upgrade: respond, redirect, reject (reset), or abort
        (a plugin failed under on_error = "abort": 500). The connection closes after it."""
        kind = verdict.kind
        if kind == "reject":
            event(logging.INFO, "request rejected by a plugin", client=self.ep.address)
            self.log_http(head, None, route=route, pool=pool, reason="rejected by a plugin", started=started)
            self.eof = True
            self.ep.abort()
            return
        if kind == "abort":
            error = verdict.reason or "a plugin failed"
            self.fail(500, error, head=head, route=route, pool=pool, started=started)
            return
        if kind == "redirect":
            status, body, headers = verdict.status or 302, b"", (("Location", verdict.url),)
        else:  # respond
            status, body, headers = verdict.status, verdict.body, verdict.headers
        names = {name.lower() for name, _ in headers}
        extra = [("Content-Length", str(len(body)))] if "content-length" not in names else []
        if "strict-transport-security" not in names:
            extra.extend(self.ctx.hsts)
        if "content-type" not in names and body:
            extra.append(("Content-Type", "text/plain; charset=utf-8"))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        answer = http1.serialize_response_head(status, reason, [*headers, *extra, ("Connection", "close")]) + body
        if not self.ep.closed:
            self.ep.write(answer)
        self.log_http(head, status, route=route, pool=pool, bytes_out=len(answer), started=started,
                      reason=f"answered by a plugin ({kind})")
        self.eof = True
        self.ep.linger_close()

    def fail(self, status: int, reason: str, *, head=None, route=None, pool=None, member=None,
             started=None, extra_headers=(), rejection: str | None = None) -> None:
        """Answer with a short error and close (after the write is flushed). ``rejection``:
        the client was refused (hostile or broken input, a limit): the reason it is counted
        under in wsproxy_rejections_total, and its log line says "request refused"."""
        if self.ctx.hsts:
            extra_headers = (*extra_headers, *self.ctx.hsts)
        body = http1.simple_response(status, reason_body(status, reason), extra_headers=extra_headers, close=True)
        if not self.ep.closed:
            self.ep.write(body)
        level = logging.WARNING if status >= 500 else logging.INFO
        if rejection is None:
            event(level, "request failed", client=self.ep.address, status=status, reason=reason)
        else:
            self.count_rejection(rejection)
            event(level, "request refused", listener=self.cfg.name, client=self.ep.address, status=status,
                  reason=reason, rejection=rejection)
        self.log_http(head, status, route=route, pool=pool, member=member, reason=reason,
                      bytes_out=len(body), started=started)
        self.eof = True
        self.ep.linger_close()

    def count_rejection(self, reason: str) -> None:
        metrics = self.ctx.state.metrics
        if metrics is not None:
            metrics.rejected(self.cfg.name, reason)

    def log_http(self, head, status, *, route=None, pool=None, member=None, reason=None,
                 bytes_in=0, bytes_out=0, started=None, pick=None) -> None:
        self.last_status = status  # what the client got (metrics: a WebSocket handshake's result)
        access({
            "kind": "http",
            "client": self.ep.address,
            "listener": self.cfg.name,
            "route": route.label if route is not None else None,
            "pool": pool,
            "member": member,
            "pick": pick,
            "method": head.method if head is not None else None,
            "path": head.target if head is not None else None,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round((time.monotonic() - started) * 1000, 1) if started else 0,
            "reason": reason,
        })

    # -- shutdown ------------------------------------------------------------------------
    def shutdown(self, spare_new: bool = False) -> None:
        """Draining: sessions idle between requests close now; busy ones finish their request
        first, and so does one that is sending a head. ``spare_new`` (a reload, where the
        listener keeps serving): a connection that has not sent its first request yet gets it
        served too, so one accepted just before the switch is not closed unanswered."""
        if self.handler is not None and hasattr(self.handler, "shutdown"):
            self.handler.shutdown()
        elif not self.busy and not self.queue and self.head_started is None \
                and not (self.parser is not None and self.parser.in_head) and (self.requests or not spare_new):
            self.eof = True
            self._wake()


def reason_body(status: int, reason: str) -> str:
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{status} {phrase}: {reason}\n"
