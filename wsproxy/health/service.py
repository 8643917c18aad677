"""HealthService: active checks for every member of every pool with ``health``.

Runs in the control plane only (one process per node), which is the only writer of the
member control cells: HEALTH, UP_SINCE_MS, RTT_US, CHECKS_OK, CHECKS_FAILED and
HEALTH_CHANGES. Every process's Pool reads them at pick time.

One task per (pool, member). The first check runs at a random offset within the interval,
so a node with many members does not check them all at once (and a restarted proxy does
not hit every member at the same instant); after that every ``interval`` stretched or
shrunk by up to ``jitter`` (HAProxy's ``spread-checks``). A member starts up; ``fall``
consecutive failures mark it down, ``rise`` consecutive passes mark it up again, and that
moment (UP_SINCE_MS) starts its slow start. Every check is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from typing import Callable

from wsproxy.health import http, tcp, ws
from wsproxy.health.probe import CheckFailed, Probe
from wsproxy.logs import event
from wsproxy.node.table import (
    CHECKS_FAILED,
    CHECKS_OK,
    HEALTH,
    HEALTH_CHANGES,
    HEALTH_DOWN,
    HEALTH_UP,
    RTT_US,
    UP_SINCE_MS,
    NodeTable,
    now_ms,
)
from wsproxy.tls import describe_error, member_tls

# health.type -> the check's run(addr, health, probe, tls=None)
CHECKS: dict[str, Callable] = {"tcp": tcp.run, "http": http.run, "ws": ws.run}

UP, DOWN = "up", "down"


class _Watch:
    """One member's checks: its config, its rise/fall counting, its task."""

    __slots__ = ("pool", "addr", "col", "health", "state", "passes", "fails", "last_error", "since", "task")

    def __init__(self, pool: str, addr, col: int, health) -> None:
        self.pool = pool
        self.addr = addr
        self.col = col
        self.health = health  # replaced in place by update(): the next round uses it
        self.state = UP
        self.passes = 0  # consecutive passes (counts towards rise while down)
        self.fails = 0  # consecutive failures (counts towards fall while up)
        self.last_error: str | None = None
        self.since = time.time()  # wall clock of the last transition (or of the first check)
        self.task: asyncio.Task | None = None


class HealthService:
    def __init__(self, config, table: NodeTable, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.table = table
        self.rng = rng or random.Random()
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._stopping: set[asyncio.Task] = set()  # tasks of watches removed by update()
        self._tls: dict = {}  # pool name -> tls.MemberTls (_pool_tls), set by start() and update()
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start a task per (pool, member) with checks; call it in the running loop."""
        self._started = True
        self._tls = self._pool_tls(self.config)
        for key, (col, addr, health) in self._wanted(self.config).items():
            watch = self._watches.get(key)
            if watch is None:
                self._start(key, col, addr, health)
            elif watch.task is None:  # started again after stop(): same state, new task
                watch.health = health
                self._launch(watch)

    async def stop(self) -> None:
        """Cancel every check and wait for them to finish (the cells keep their last values)."""
        self._started = False
        tasks = [w.task for w in self._watches.values() if w.task is not None] + list(self._stopping)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping.clear()
        for watch in self._watches.values():
            watch.task = None

    def update(self, config) -> None:
        """A reload: members that keep their checks keep their state and counts (the next
        round uses the new settings), new ones start up, removed ones stop and are marked
        up (a pool without checks is up as far as checks go)."""
        self.config = config
        wanted = self._wanted(config)
        for key in [k for k in self._watches if k not in wanted]:
            watch = self._watches.pop(key)
            if watch.task is not None:
                watch.task.cancel()
                self._stopping.add(watch.task)
                watch.task.add_done_callback(self._stopping.discard)
            if self.table.ctrl(watch.col, HEALTH) == HEALTH_DOWN:
                self._set_up(watch.col)
        self._tls = self._pool_tls(config)
        for key, (col, addr, health) in wanted.items():
            watch = self._watches.get(key)
            if watch is not None:
                watch.health = health
            elif self._started:
                self._start(key, col, addr, health)

    def snapshot(self) -> dict:
        """``{pool: {addr: {"state", "rtt_ms", "checks_ok", "checks_failed", "last_error",
        "since"}}}`` for the admin API; ``since`` is the Unix time of the last transition
        (or of the first check), ``rtt_ms`` None before a check passed."""
        table = self.table
        out: dict[str, dict] = {}
        for (pool, addr), w in self._watches.items():
            rtt = table.ctrl(w.col, RTT_US)
            out.setdefault(pool, {})[addr] = {
                "state": w.state,
                "rtt_ms": round(rtt / 1000, 3) if rtt >= 0 else None,
                "checks_ok": table.ctrl(w.col, CHECKS_OK),
                "checks_failed": table.ctrl(w.col, CHECKS_FAILED),
                "last_error": w.last_error,
                "since": round(w.since, 3),
            }
        return out

    # -- the checks --------------------------------------------------------------------------

    def _wanted(self, config) -> dict[tuple[str, str], tuple[int, object, object]]:
        wanted = {}
        for pool in config.pools.values():
            if pool.health is None:
                continue
            for member in pool.members:
                addr = str(member.addr)
                wanted[(pool.name, addr)] = (self.table.member_slot(pool.name, addr), member.addr, pool.health)
        return wanted

    @staticmethod
    def _pool_tls(config) -> dict:
        """pool name -> tls.MemberTls, for the http and ws checks of pools with ``tls`` (a tcp
        check only connects: TLS would prove nothing more about the member's port)."""
        return {pool.name: member_tls(pool.tls, config.source, f"pools.{pool.name}.tls")
                for pool in config.pools.values()
                if pool.health is not None and pool.health.type != "tcp" and pool.tls is not None}

    def _start(self, key: tuple[str, str], col: int, addr, health) -> None:
        watch = _Watch(key[0], addr, col, health)
        # A member starts up, whatever an earlier watch of the same column left behind.
        if self.table.ctrl(col, HEALTH) != HEALTH_UP:
            self.table.set_ctrl(col, HEALTH, HEALTH_UP)
        self._watches[key] = watch
        self._launch(watch)

    def _launch(self, watch: _Watch) -> None:
        watch.task = asyncio.get_running_loop().create_task(
            self._run(watch), name=f"health {watch.pool} {watch.addr}")

    async def _run(self, watch: _Watch) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, watch.health.interval))
        while True:
            health = watch.health
            probe = Probe()
            error: str | None = None
            try:
                async with asyncio.timeout(health.timeout):
                    await CHECKS[health.type](watch.addr, health, probe, tls=self._tls.get(watch.pool))
            except TimeoutError:
                error = f"timeout ({probe.phase})"
            except CheckFailed as exc:
                error = str(exc)
            except ssl.SSLError as exc:
                error = describe_error(exc)
            except OSError as exc:
                error = _os_reason(exc)
            except Exception as exc:  # noqa: BLE001 - a check's bug must not end the checks
                error = f"{type(exc).__name__}: {exc}"
            self._record(watch, error, probe.rtt_us)
            jitter = health.jitter
            await asyncio.sleep(health.interval * (1.0 + jitter * self.rng.uniform(-1.0, 1.0)))

    def _record(self, watch: _Watch, error: str | None, rtt_us: int) -> None:
        table, col = self.table, watch.col
        health = watch.health
        if error is None:
            table.add_ctrl(col, CHECKS_OK)
            if rtt_us >= 0:
                table.set_ctrl(col, RTT_US, rtt_us)
            watch.passes += 1
            watch.fails = 0
            if watch.state == DOWN and watch.passes >= health.rise:
                watch.state = UP
                watch.since = time.time()
                self._set_up(col)
                event(logging.INFO, "member up", pool=watch.pool, member=str(watch.addr), check=health.type,
                      rtt_ms=round(rtt_us / 1000, 3) if rtt_us >= 0 else None)
            return
        table.add_ctrl(col, CHECKS_FAILED)
        watch.last_error = error
        watch.fails += 1
        watch.passes = 0
        if watch.state == UP and watch.fails >= health.fall:
            watch.state = DOWN
            watch.since = time.time()
            table.set_ctrl(col, HEALTH, HEALTH_DOWN)
            table.add_ctrl(col, HEALTH_CHANGES)
            event(logging.WARNING, "member down", pool=watch.pool, member=str(watch.addr), check=health.type,
                  reason=error, fails=watch.fails)

    def _set_up(self, col: int) -> None:
        # UP_SINCE_MS first: a pick that sees HEALTH up already sees the ramp's start.
        self.table.set_ctrl(col, UP_SINCE_MS, now_ms())
        self.table.set_ctrl(col, HEALTH, HEALTH_UP)
        self.table.add_ctrl(col, HEALTH_CHANGES)


def _os_reason(exc: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('10.0.0.1', 80)"
    (the member is in the log line already); a resolver error keeps its own text."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
