"""Connections to members: connect with a timeout, retry on another member, keep-alive reuse.

``connect_to_pool`` is the one place that turns "this request needs a member of pool P"
into a connected Endpoint, or into the status to answer: 503 when no member can take the
request (all down or full), 502 when every connect attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque

from wsproxy.errors import UpstreamError
from wsproxy.health import passive
from wsproxy.logs import event
from wsproxy.proxy.endpoint import DISCARD, Endpoint
from wsproxy.tls import describe_error


class IdleConnections:
    """Keep-alive connections to members, parked between requests (per member, LIFO).

    A parked connection's sink is ``DISCARD``: a member that speaks or closes while idle
    loses the connection, so it is never handed out half-dead by our own knowledge.
    """

    def __init__(self) -> None:
        self._idle: dict[object, deque[tuple[Endpoint, asyncio.TimerHandle]]] = {}

    def get(self, member) -> Endpoint | None:
        stack = self._idle.get(member)
        while stack:
            ep, timer = stack.pop()
            timer.cancel()
            if not ep.closed and not ep.transport.is_closing():
                return ep
        return None

    def put(self, member, ep: Endpoint, limit: int, timeout: float) -> None:
        stack = self._idle.setdefault(member, deque())
        if limit <= 0 or ep.closed:
            ep.close()
            return
        while len(stack) >= limit:
            old, timer = stack.popleft()
            timer.cancel()
            old.close()
        ep.sink = DISCARD
        ep.resume_all_reading()
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, member, ep)
        stack.append((ep, timer))

    def _expire(self, member, ep: Endpoint) -> None:
        stack = self._idle.get(member)
        if stack:
            for i, (e, _timer) in enumerate(stack):
                if e is ep:
                    del stack[i]
                    break
        ep.close()

    def close_all(self) -> None:
        for stack in self._idle.values():
            while stack:
                ep, timer = stack.pop()
                timer.cancel()
                ep.close()


def park_key(pool, member):
    """What a parked connection to ``member`` of ``pool`` is filed under in IdleConnections:
    its address, and for a TLS pool its TLS settings too (another pool may reach the same
    address with another SNI, or in plain text). Equal across generations, so a reload
    still reuses the parked connections."""
    tls = pool.tls
    return member.addr if tls is None else (member.addr, pool.config.tls)


async def open_connection(member, timeout: float, proxy_header: bytes | None = None, sink=None,
                          loop: asyncio.AbstractEventLoop | None = None, tls=None) -> Endpoint:
    """A connected Endpoint to ``member`` (``tls``: a tls.MemberTls, whose handshake counts
    in ``timeout``); ``proxy_header`` is written first."""
    loop = loop or asyncio.get_running_loop()
    host, port = member.addr.host, member.addr.port
    # asyncio.timeout, not wait_for: wait_for wraps the connect in a Task of its own, a
    # cost paid on every member connection (benchmarks: µs CPU per handshake).
    async with asyncio.timeout(timeout):
        if tls is None:
            _transport, ep = await loop.create_connection(lambda: Endpoint(sink or DISCARD), host, port)
        elif not proxy_header:
            _transport, ep = await loop.create_connection(
                lambda: Endpoint(sink or DISCARD), host, port, ssl=tls.context,
                server_hostname=tls.server_hostname(host), ssl_handshake_timeout=timeout)
        else:  # the PROXY header goes first, in plain text; TLS starts after it
            transport, ep = await loop.create_connection(lambda: Endpoint(sink or DISCARD), host, port)
            ep.write(proxy_header)
            proxy_header = None
            ep.transport = await loop.start_tls(transport, ep, tls.context, server_hostname=tls.server_hostname(host),
                                                ssl_handshake_timeout=timeout)
    if proxy_header:
        ep.write(proxy_header)  # before anything else on this connection
    return ep


class Upstream:
    """A member connection lent to one request or one WebSocket session."""

    __slots__ = ("pool", "member", "endpoint", "reused", "attempts", "queued")

    def __init__(self, pool, member, endpoint: Endpoint, reused: bool, attempts: int,
                 queued: bool = False) -> None:
        self.pool = pool
        self.member = member
        self.endpoint = endpoint
        self.reused = reused
        self.attempts = attempts
        self.queued = queued  # it waited in the pool's queue for a slot


async def connect_to_pool(pool, idle: IdleConnections | None, *, reuse: bool = True, key: bytes | None = None,
                          prefer=None, proxy_header: bytes | None = None, on_queued=None,
                          sink=None, loop: asyncio.AbstractEventLoop | None = None, plugin_key: bytes | None = None,
                          on_selected=None, on_failed=None) -> Upstream:
    """Pick a member (waiting in the queue when all are full), connect, retry on another member.

    The member is acquired on return; the caller must ``pool.release(upstream.member)`` when
    done with it. ``key``/``prefer``: see Pool.pick. ``proxy_header`` is written first on a new
    connection (and a parked one is never reused then: it carried another client's header).
    ``on_queued(future)`` is called if the request has to wait: the caller may set an
    exception on that future to stop waiting (its client went away). ``sink``: the new
    endpoint's first sink (default DISCARD), for members that may speak first (tcp). ``loop``:
    the running loop, when the caller has it at hand. ``plugin_key``: a plugin's hash key
    (Pool.pick). ``on_selected(member, attempt) -> bool`` (LB_SELECTED plugins) runs before
    each connect; False means pick another member (this one is avoided); it may also raise
    to stop, and the member is released first. ``on_failed(member, attempt, reason, tried)``
    (LB_FAILED plugins) runs after each failed connect; True asks for one more attempt
    (another member) even when ``retries`` are spent; it may raise to stop.
    """
    cfg = pool.config
    avoid: list = []
    failures: list[str] = []
    queued = False
    attempt = 0
    limit = 1 + cfg.retries
    while attempt < limit:
        member = pool.pick(avoid, key=key, prefer=prefer, plugin_key=plugin_key)
        if member is not None:
            pool.acquire(member)
        elif pool.can_queue(avoid) and cfg.queue.size > 0:
            member = await _wait_for_slot(pool, avoid, on_queued)  # acquired for us
            queued = True
        else:
            break
        attempt += 1
        if on_selected is not None:
            try:
                go = on_selected(member, attempt)
            except BaseException:
                pool.release(member)
                raise
            if not go:
                pool.release(member)
                avoid.append(member)
                attempt -= 1  # a plugin's reselect is not a failed attempt
                continue
        if reuse and idle is not None and proxy_header is None:
            ep = idle.get(park_key(pool, member))
            if ep is not None:
                return Upstream(pool, member, ep, True, attempt, queued)
        try:
            ep = await open_connection(member, cfg.connect_timeout, proxy_header, sink, loop, pool.tls)
        except (OSError, TimeoutError) as exc:
            pool.release(member)
            why = ("connect timeout" if isinstance(exc, TimeoutError)
                   else describe_error(exc) if isinstance(exc, ssl.SSLError) else (exc.strerror or str(exc)))
            failures.append(f"{member.addr}: {why}")
            event(logging.WARNING, "member connect failed", pool=pool.name, member=str(member.addr),
                  error=why, attempt=attempt)
            passive.connect_failed(pool, member, why)  # logs "member ejected" when it is
            avoid.append(member)
            if on_failed is not None and on_failed(
                    member, attempt, "timeout" if isinstance(exc, TimeoutError) else "refused",
                    tuple(str(m.addr) for m in avoid)):
                limit = max(limit, attempt + 1)
            continue
        except BaseException:
            pool.release(member)
            raise
        passive.connect_ok(pool, member)  # logs "member back" when it is
        return Upstream(pool, member, ep, False, attempt, queued)
    if failures:
        raise UpstreamError(502, "could not connect to pool %s: %s" % (pool.name, "; ".join(failures)))
    raise UpstreamError(503, "no member available in pool %s: %s" % (pool.name, pool.why_unavailable(avoid)),
                        retry_after=pool.retry_after(avoid))


async def _wait_for_slot(pool, avoid, on_queued):
    """Wait in the pool's FIFO queue until ``release`` hands us an acquired member."""
    cfg = pool.config.queue
    if pool.queue_full:
        pool.queue_rejected()
        raise UpstreamError(503, "the queue of pool %s is full (%d waiting)" % (pool.name, len(pool.waiting)),
                            retry_after=pool.retry_after(avoid))
    granted = asyncio.get_running_loop().create_future()

    def deliver(member) -> bool:
        if granted.done():  # timed out or the client left: the slot goes to the next waiter
            return False
        granted.set_result(member)
        return True

    waiter = pool.enqueue(deliver, avoid)
    if on_queued is not None:
        on_queued(granted)
    taken = False
    try:
        async with asyncio.timeout(cfg.timeout):
            member = await granted
        taken = True
        return member
    except TimeoutError:
        pool.queue_rejected()
        raise UpstreamError(503, "waited %gs in the queue of pool %s: %s"
                            % (cfg.timeout, pool.name, pool.why_unavailable(avoid)),
                            retry_after=pool.retry_after(avoid)) from None
    finally:
        pool.dequeue(waiter)
        if not taken and granted.done() and not granted.cancelled() and granted.exception() is None:
            pool.release(granted.result())  # handed a slot as we gave up: pass it on
        elif not granted.done():
            granted.cancel()
