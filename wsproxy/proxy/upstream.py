"""Connections to members: connect with a timeout, retry on another member, keep-alive reuse.

``connect_to_pool`` is the one place that turns "this request needs a member of pool P"
into a connected Endpoint, or into the status to answer: 503 when no member can take the
request (all down or full), 502 when every connect attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from wsproxy.errors import UpstreamError
from wsproxy.logs import event
from wsproxy.proxy.endpoint import DISCARD, Endpoint


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


async def open_connection(member, timeout: float) -> Endpoint:
    loop = asyncio.get_running_loop()
    host, port = member.addr.host, member.addr.port
    _transport, ep = await asyncio.wait_for(
        loop.create_connection(lambda: Endpoint(DISCARD), host, port), timeout
    )
    return ep


class Upstream:
    """A member connection lent to one request or one WebSocket session."""

    __slots__ = ("pool", "member", "endpoint", "reused", "attempts")

    def __init__(self, pool, member, endpoint: Endpoint, reused: bool, attempts: int) -> None:
        self.pool = pool
        self.member = member
        self.endpoint = endpoint
        self.reused = reused
        self.attempts = attempts


async def connect_to_pool(pool, idle: IdleConnections | None, *, reuse: bool = True) -> Upstream:
    """Pick a member, connect, retry on another member; the member is acquired on return.

    The caller must ``pool.release(upstream.member)`` when done with it.
    """
    cfg = pool.config
    avoid: list = []
    failures: list[str] = []
    for attempt in range(1 + cfg.retries):
        member = pool.pick(avoid)
        if member is None:
            break
        pool.acquire(member)
        if reuse and idle is not None:
            ep = idle.get(member.addr)
            if ep is not None:
                return Upstream(pool, member, ep, True, attempt + 1)
        try:
            ep = await open_connection(member, cfg.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            pool.release(member)
            why = "connect timeout" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or str(exc))
            failures.append(f"{member.addr}: {why}")
            marked_down = pool.connect_failed(member)
            event(logging.WARNING, "member connect failed", pool=pool.name, member=str(member.addr),
                  error=why, attempt=attempt + 1)
            if marked_down:
                event(logging.WARNING, "member marked down", pool=pool.name, member=str(member.addr),
                      fail_streak=member.fail_streak, retry_in_s=cfg.down_time)
            avoid.append(member)
            continue
        except BaseException:
            pool.release(member)
            raise
        pool.connect_ok(member)
        return Upstream(pool, member, ep, False, attempt + 1)
    if failures:
        raise UpstreamError(502, "could not connect to pool %s: %s" % (pool.name, "; ".join(failures)))
    raise UpstreamError(503, "no member available in pool %s: %s" % (pool.name, pool.why_unavailable()))
