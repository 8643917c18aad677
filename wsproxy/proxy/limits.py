"""ListenerLimits: the connection and handshake limits of one listener bind (NGINX's
limit_conn and limit_req, HAProxy's maxconn), as pure data and methods; plus the one log
line and counter of a refused connection (``refused_connection``).

- ``max_conns``: client connections open on the listener at once (HTTP, WebSocket, tcp: every
  accepted connection until it is gone). Over it, a new connection is closed at once.
- ``max_conns_per_ip``: the same, per client (``client_key``); 0 = off.
- ``handshake_rate_per_ip``: a token bucket per client: ``burst`` WebSocket handshakes at
  once, refilled at ``rate`` per second; an upgrade with no token left gets 429.

One object per bind, owned by the App and shared by every config generation that listens
there, so a reload keeps the live counts (connections accepted under the old generation
still count) and only ``configure`` changes the numbers. It lives in one process: with
``workers = N`` each worker has its own (the limits are per worker).

Memory stays bounded whatever the clients do: a per-client connection count exists only
while that client has a connection open (so there are at most ``max_conns`` of them), and
the handshake buckets are capped at ``max_tracked`` entries. A bucket that has refilled is
the same as no bucket, so the oldest entries are dropped as soon as they are full again
(a few per handshake, so the sweep never stalls the loop); at the cap the least recently
used entry goes (that client starts again with a full bucket).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
from typing import Callable

from wsproxy.logs import event

MAX_TRACKED_IPS = 65536  # handshake buckets kept at most, per listener (about 200 bytes each)
_SWEEP_PER_CALL = 2  # refilled buckets dropped per handshake, oldest first
LOG_INTERVAL = 1.0  # seconds: at most one log line per refusal reason while refusals go on

# Connection refusals (the labels of wsproxy_rejections_total).
MAX_CONNS = "max_conns"
IP_CONNS = "ip_conns"


@functools.lru_cache(maxsize=4096)
def _key_of_address(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # One host (or one LAN) usually holds a whole /64: count the prefix, or a client
        # could spread over 2^64 addresses and never meet a per-address limit.
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_key(ip: str) -> str:
    """What per-client limits count under: an IPv4 address as is, an IPv6 address's /64
    prefix, an IPv4-mapped IPv6 address as its IPv4 address."""
    if ":" not in ip:
        return ip  # IPv4, as the socket reports it: already canonical
    return _key_of_address(ip) or ip


def forwarded_client(values: list[str], trusted) -> str | None:
    """The client key an X-Forwarded-For chain names, for a request from a trusted proxy:
    the rightmost address that is not itself one of our ``trusted`` proxies (each hop
    appends the address it saw, so everything left of that may be forged). None when the
    chain is absent, all trusted, or has an entry that is not an address."""
    hops = [hop.strip() for value in values for hop in value.split(",")]
    for hop in reversed(hops):
        if not hop:
            continue
        key = _key_of_address(hop)
        if key is None:
            return None
        if not trusted.contains(hop):
            return key
    return None


class ListenerLimits:
    __slots__ = ("max_conns", "max_conns_per_ip", "rate", "burst", "max_tracked", "clock",
                 "conns", "per_ip", "buckets", "_refill_time", "_refusals", "_logged_at")

    def __init__(self, max_conns: int = 0, max_conns_per_ip: int = 0, rate: float = 0.0, burst: int = 0, *,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED_IPS) -> None:
        self.clock = clock
        self.max_tracked = max_tracked
        self.conns = 0  # client connections open on the listener
        self.per_ip: dict[str, int] = {}  # client key -> open connections (only keys with some)
        # client key -> (tokens, when they were counted); oldest use first (re-inserted on use)
        self.buckets: dict[str, tuple[float, float]] = {}
        self._refusals: dict[str, int] = {}  # reason -> refusals not logged yet
        self._logged_at: dict[str, float] = {}  # reason -> when its last line was logged
        self.max_conns = self.max_conns_per_ip = self.burst = 0
        self.rate = self._refill_time = 0.0
        self.configure(max_conns, max_conns_per_ip, rate, burst)

    @classmethod
    def for_listener(cls, listener, **kw) -> ListenerLimits:
        """The limits a ``config.schema.ListenerConfig`` sets."""
        limits = cls(**kw)
        limits.configure_from(listener)
        return limits

    def configure_from(self, listener) -> None:
        rate = listener.handshake_rate_per_ip
        self.configure(listener.max_conns, listener.max_conns_per_ip,
                       rate.rate if rate is not None else 0.0, rate.burst if rate is not None else 0)

    def configure(self, max_conns: int, max_conns_per_ip: int, rate: float, burst: int) -> None:
        """New numbers (a reload); the counts stay. 0 turns a limit off. Buckets start over
        when the rate changes: everyone gets a full bucket under the new settings."""
        self.max_conns, self.max_conns_per_ip = max_conns, max_conns_per_ip
        if (rate, burst) != (self.rate, self.burst):
            self.buckets.clear()
        self.rate, self.burst = rate, burst
        # A bucket untouched for this long is full again, so it can be forgotten.
        self._refill_time = burst / rate if rate > 0 else 0.0

    # -- connections --------------------------------------------------------------------------
    def open(self, key: str | None) -> str | None:
        """Count a new connection, under client ``key`` too unless it is None (the client is
        not known yet, or exempt). Returns the refusal reason (``MAX_CONNS``, ``IP_CONNS``)
        instead when it is over a limit, and then counts nothing."""
        if self.max_conns and self.conns >= self.max_conns:
            return self._refused(MAX_CONNS)
        if key is not None:
            refused = self.open_ip(key)
            if refused is not None:
                return refused
        self.conns += 1
        return None

    def open_ip(self, key: str) -> str | None:
        """Count a connection (already counted by ``open``) under client ``key``: the client
        became known later (a PROXY header). ``IP_CONNS`` when over the limit, nothing counted."""
        count = self.per_ip.get(key, 0)
        if self.max_conns_per_ip and count >= self.max_conns_per_ip:
            return self._refused(IP_CONNS)
        self.per_ip[key] = count + 1
        return None

    def close(self, key: str | None) -> None:
        """A connection counted by ``open`` (and ``open_ip`` under ``key``) is gone."""
        self.conns -= 1
        if key is not None:
            self.close_ip(key)

    def close_ip(self, key: str) -> None:
        count = self.per_ip.get(key, 0) - 1
        if count > 0:
            self.per_ip[key] = count
        else:
            self.per_ip.pop(key, None)

    # -- handshakes ---------------------------------------------------------------------------
    def handshake(self, key: str) -> float:
        """Take a token for one WebSocket handshake from client ``key``: 0.0 when it may
        proceed, else the seconds until a token is back (the 429's Retry-After)."""
        rate = self.rate
        if rate <= 0:
            return 0.0
        now = self.clock()
        buckets = self.buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = float(self.burst)
            if len(buckets) >= self.max_tracked:
                self._make_room(now)
        else:
            tokens = min(float(self.burst), entry[0] + (now - entry[1]) * rate)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / rate
        self._sweep(now, _SWEEP_PER_CALL)
        return wait

    def _sweep(self, now: float, most: int) -> None:
        """Drop up to ``most`` of the oldest buckets that have refilled."""
        buckets = self.buckets
        horizon = now - self._refill_time
        for _ in range(most):
            oldest = next(iter(buckets), None)
            if oldest is None or buckets[oldest][1] > horizon:
                return
            del buckets[oldest]

    def _make_room(self, now: float) -> None:
        """At the cap: drop every refilled bucket; if none was, the least recently used one."""
        before = len(self.buckets)
        self._sweep(now, before)
        if len(self.buckets) == before:
            del self.buckets[next(iter(self.buckets))]

    # -- refusal log lines --------------------------------------------------------------------
    def _refused(self, reason: str) -> str:
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        return reason

    def log_due(self, reason: str) -> int:
        """How many ``reason`` refusals to report in a log line now (at most one line per
        ``LOG_INTERVAL`` while they go on), or 0: not yet, the last line is too recent."""
        now = self.clock()
        if now - self._logged_at.get(reason, -math.inf) < LOG_INTERVAL:
            return 0
        self._logged_at[reason] = now
        return self._refusals.pop(reason, 0)


def refused_connection(ctx, limits: ListenerLimits, reason: str, client: str) -> None:
    """A connection refused by ``limits`` (``MAX_CONNS``, ``IP_CONNS``): counted in
    wsproxy_rejections_total every time, logged at most once per ``LOG_INTERVAL`` per reason
    with the number of refusals since the last line (a flood must not flood the log)."""
    name = ctx.config.name
    metrics = ctx.state.metrics
    if metrics is not None:
        metrics.rejected(name, reason)
    refused = limits.log_due(reason)
    if refused:
        limit = limits.max_conns if reason == MAX_CONNS else limits.max_conns_per_ip
        what = "the listener" if reason == MAX_CONNS else "one client IP"
        event(logging.INFO, "connection refused: %s has %d connections open (%s)" % (what, limit, reason),
              listener=name, client=client, rejection=reason, refused=refused, limit=limit)


def retry_after(wait: float) -> str:
    """A Retry-After value (whole seconds, at least 1) for a wait in seconds."""
    return str(max(1, math.ceil(wait)))
