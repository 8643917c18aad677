"""IdleSweeper: one timer for the idle timeout of every WebSocket relay.

A TimerHandle per WebSocket costs about 600 bytes (handle, bound method, libuv timer),
a good part of what an idle proxied WebSocket costs. Instead, each relay sets a flag on
every read (``activity``), and one periodic sweep, owned by the App, checks them all: a relay
whose flag stayed down for its ``idle_timeout`` is closed. The sweep period is a quarter of
the shortest timeout registered (at most 5 s), so a relay closes between ``idle_timeout``
and ``idle_timeout`` plus one period of silence.

The keep-alive pings (proxy/keepalive.py) run on a second sweeper of the same kind,
``IdleSweeper.keepalive``: the App owns one object, and a route without keep-alive never
registers anything there (no timer runs while it is empty).
"""

from __future__ import annotations

import asyncio

MAX_PERIOD = 5.0
MIN_PERIOD = 0.05


class Sweeper:
    """One timer that walks a set of relays every period: the shortest period any of them
    asked for (``period_of``), between MIN_PERIOD and MAX_PERIOD. No timer while empty."""

    def __init__(self) -> None:
        self.relays: set = set()
        self.period = MAX_PERIOD
        self._handle: asyncio.TimerHandle | None = None

    def period_of(self, relay) -> float:
        raise NotImplementedError

    def tick(self, relay, now: float) -> None:
        raise NotImplementedError

    def add(self, relay) -> None:
        """Watch ``relay`` until ``discard``."""
        self.relays.add(relay)
        period = min(MAX_PERIOD, max(MIN_PERIOD, self.period_of(relay)))
        if self._handle is None or period < self.period:
            self.period = period
            if self._handle is not None:
                self._handle.cancel()
            self._handle = asyncio.get_running_loop().call_later(period, self._sweep)

    def discard(self, relay) -> None:
        self.relays.discard(relay)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for relay in list(self.relays):
            self.tick(relay, now)
        if self.relays:
            self._handle = loop.call_later(self.period, self._sweep)
        else:
            self._handle = None
            self.period = MAX_PERIOD

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.relays.clear()


class IdleSweeper(Sweeper):
    def __init__(self) -> None:
        super().__init__()
        from wsproxy.proxy.keepalive import KeepAliveSweeper  # it builds on Sweeper, above

        self.keepalive = KeepAliveSweeper()

    def period_of(self, relay) -> float:
        return relay.idle_timeout / 4

    def tick(self, relay, now: float) -> None:
        relay.idle_tick(now)

    def close(self) -> None:
        super().close()
        self.keepalive.close()
