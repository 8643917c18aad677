"""ControlPlane: the node's one brain for member state, health and rebalancing.

It runs in exactly one process per node (the master with ``workers = N``, the only process
otherwise) and acts only by writing the NodeTable: member ADMIN/WEIGHT, drain sequence
numbers, and shed requests addressed to a process row. Every process carries those out on
its own connections (node/live.py). So operator actions and rebalancing reach every worker
without a message bus, and a worker that dies takes nothing of the plan with it.

Rebalancing (issue #6; the gap in anchors-features.md §1d, §2 item 3, §3): after a member
rejoins or is added, long-lived WebSockets stay where they are. With ``rebalance`` on a
pool, each tick computes every eligible member's fair share of the pool's connections
(by weight); a member holding more than (1 + threshold) x its share sheds connections
with Close 1012 (clients reconnect, and least_conn sends them to the emptier members), at
most ``rate`` per second for the pool and at most ``max_fraction`` of the connections per
episode. An episode ends when the pool is within threshold. Only one shed per member is in
flight at a time: a shed takes a tick to be carried out, and a close a moment to complete,
so the counts the planner reads are never far behind and it does not overshoot.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from wsproxy.config.schema import Config, PoolConfig, RebalanceConfig
from wsproxy.logs import event
from wsproxy.node.table import (ADMIN, CHECKS_FAILED, CHECKS_OK, DRAIN_SEQ, DRAIN_SPREAD_MS, DRAINING, ENABLED,
                                GAUGE, HEALTH, HEALTH_CHANGES, HEALTH_DOWN, REBALANCE_CLOSES, RTT_US, SHED_OLDEST,
                                SHED_ORDER, SHED_RANDOM, UP_SINCE_MS, WEIGHT, NodeTable, now_ms)

TICK = 0.1  # seconds between planner runs
SETTLE = 5.0  # after an episode, seconds before an automatic one may start (reconnects land)
MAX_WEIGHT = 1000


def ejected_key(pool: str, addr: str) -> tuple:
    """The gauge a process raises while it holds ``addr`` passively ejected (balancing/pool.py)."""
    return ("member_ejected", pool, addr)


@dataclass
class _Episode:
    """One rebalancing run of a pool: from imbalance found to within threshold."""

    budget: int  # max_fraction of the pool's connections when it began
    moved: int = 0
    total: int = 0  # the pool's connections when it began
    tokens: float = 0.0
    manual: bool = False
    started: float = 0.0


class ControlPlane:
    def __init__(self, config: Config, table: NodeTable, metrics=None, *, clock=time.monotonic) -> None:
        self.table = table
        self.metrics = metrics
        self.clock = clock
        self.generation = 1
        self.config = config
        self.health = None  # wsproxy.health.HealthService, made in start()
        self._episodes: dict[str, _Episode] = {}
        self._quiet_until: dict[str, float] = {}  # pool -> no automatic episode before this (clock)
        self._last_tick = clock()
        self._handle = None
        self._health_seen: dict[int, int] = {}
        self._register(config)

    # -- config --------------------------------------------------------------------------
    def _register(self, config: Config) -> None:
        """Give every member of ``config`` its column and gauge now, before workers fork."""
        table = self.table
        for pool in config.pools.values():
            order = SHED_RANDOM if pool.rebalance is not None and pool.rebalance.order == "random" else SHED_OLDEST
            for member in pool.members:
                addr = str(member.addr)
                col = table.member_slot(pool.name, addr)
                table.counter_slot(ejected_key(pool.name, addr), GAUGE)
                table.set_ctrl(col, SHED_ORDER, order)
        if self.metrics is not None:
            self.metrics.register(config)

    def apply(self, config: Config) -> None:
        """A reload: the new config's members get columns; health checks follow the new pools."""
        self.config = config
        self.generation += 1
        self._register(config)
        self._episodes = {k: v for k, v in self._episodes.items() if k in config.pools}
        if self.health is not None:
            self.health.update(config)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            from wsproxy.health import HealthService
        except ImportError:  # pragma: no cover - the health package arrives with issue #6
            HealthService = None
        if HealthService is not None:
            # Started even with no health configured: a reload may add some (update()).
            self.health = HealthService(self.config, self.table)
            self.health.start()
        self._last_tick = self.clock()
        self._handle = loop.call_later(TICK, self._tick, loop)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.health is not None:
            await self.health.stop()

    def _tick(self, loop) -> None:
        try:
            self.tick()
        except Exception:  # the planner must never die silently
            logging.getLogger("wsproxy").exception("control plane tick failed")
        self._handle = loop.call_later(TICK, self._tick, loop)

    def tick(self) -> None:
        now = self.clock()
        elapsed, self._last_tick = now - self._last_tick, now
        self.table.refresh_rows()
        self._count_health_changes()
        for pool in self.config.pools.values():
            policy = pool.rebalance
            episode = self._episodes.get(pool.name)
            if episode is None and (policy is None or not policy.auto):
                continue
            self._rebalance_step(pool, policy or RebalanceConfig(), elapsed, now)

    def _count_health_changes(self) -> None:
        if self.metrics is None or not hasattr(self.metrics, "health_change"):
            return
        table = self.table
        for (pool, addr), col in table.member_slots.items():
            changes = table.ctrl(col, HEALTH_CHANGES)
            seen = self._health_seen.get(col, 0)
            if changes != seen:
                self._health_seen[col] = changes
                # Transitions alternate: counting back from the state now labels each one.
                down = table.ctrl(col, HEALTH) == HEALTH_DOWN
                for i in range(max(0, changes - seen)):
                    self.metrics.health_change(pool, addr, "down" if down == (i % 2 == 0) else "up")

    # -- members -------------------------------------------------------------------------
    def _pool(self, name: str) -> PoolConfig:
        pool = self.config.pools.get(name)
        if pool is None:
            raise KeyError(f"no pool named {name!r}")
        return pool

    def _col(self, pool_name: str, addr: str) -> int:
        pool = self._pool(pool_name)
        for member in pool.members:
            if str(member.addr) == addr:
                return self.table.member_slot(pool_name, addr)
        raise KeyError(f"pool {pool_name!r} has no member {addr!r}")

    def member_state(self, pool: PoolConfig, addr: str, col: int) -> str:
        table = self.table
        if table.ctrl(col, ADMIN) == DRAINING:
            return "draining"
        if table.ctrl(col, HEALTH) == HEALTH_DOWN:
            return "down"
        ejected = table.counter_slots.get(ejected_key(pool.name, addr))
        if ejected is not None and table.total(ejected) > 0:
            return "down"
        since = table.ctrl(col, UP_SINCE_MS)
        if pool.slow_start > 0 and since and now_ms() - since < pool.slow_start * 1000:
            return "slow_start"
        return "up"

    def weight(self, member, col: int) -> int:
        override = self.table.ctrl(col, WEIGHT)
        return override if override >= 0 else member.weight

    def effective_weight(self, pool: PoolConfig, member, col: int) -> float:
        """The weight balancers use now: a member in slow start counts for the part of its
        weight it has ramped to, so the planner never sheds towards a member the balancer
        would not yet send the reconnects to."""
        weight = float(self.weight(member, col))
        since = self.table.ctrl(col, UP_SINCE_MS)
        if pool.slow_start > 0 and since:
            ramp = (now_ms() - since) / (pool.slow_start * 1000.0)
            if ramp < 1.0:
                weight = max(weight * ramp, min(weight, 1.0) * 0.01)
        return weight

    # -- operator actions ----------------------------------------------------------------
    def drain(self, pool: str, addr: str, spread: float | None = None) -> dict:
        col = self._col(pool, addr)
        window = self._pool(pool).drain_spread if spread is None else spread
        if window < 0:
            raise ValueError("spread must be zero or more seconds")
        table = self.table
        table.set_ctrl(col, DRAIN_SPREAD_MS, int(window * 1000))
        table.set_ctrl(col, ADMIN, DRAINING)
        table.add_ctrl(col, DRAIN_SEQ)
        conns = table.conns(col)
        event(logging.WARNING, "member draining", pool=pool, member=addr, conns=conns, spread_s=window)
        return {"pool": pool, "member": addr, "state": "draining", "conns": conns, "spread_s": window}

    def enable(self, pool: str, addr: str) -> dict:
        col = self._col(pool, addr)
        was = self.table.ctrl(col, ADMIN)
        self.table.set_ctrl(col, ADMIN, ENABLED)
        if was != ENABLED:
            event(logging.INFO, "member enabled", pool=pool, member=addr)
        return {"pool": pool, "member": addr, "state": self.member_state(self._pool(pool), addr, col)}

    def set_weight(self, pool: str, addr: str, weight: int) -> dict:
        col = self._col(pool, addr)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be an integer from 0 to {MAX_WEIGHT}")
        self.table.set_ctrl(col, WEIGHT, weight)
        event(logging.INFO, "member weight set", pool=pool, member=addr, weight=weight)
        return {"pool": pool, "member": addr, "weight": weight}

    def rebalance(self, pool_name: str) -> dict:
        """Rebalance now, within the pool's policy (its defaults when it has none)."""
        pool = self._pool(pool_name)
        policy = pool.rebalance or RebalanceConfig()
        loads = self._loads(pool)
        needed = _closes_needed(loads, policy.threshold)
        total = sum(c for _, c, _ in loads)
        episode = self._episodes.get(pool_name)
        if episode is None and needed:
            episode = self._episodes[pool_name] = _Episode(budget=_budget(total, policy), manual=True,
                                                           started=self.clock(), total=total)
        planned = min(needed, episode.budget - episode.moved) if episode is not None else 0
        event(logging.INFO, "rebalance requested", pool=pool_name, conns=total, closes_planned=planned)
        return {"pool": pool_name, "conns": total, "closes_planned": planned,
                "rate_per_s": policy.rate, "threshold": policy.threshold}

    # -- rebalancing ---------------------------------------------------------------------
    def _loads(self, pool: PoolConfig) -> list[tuple[int, int, float]]:
        """(column, connections, weight) of the members that may take connections."""
        out = []
        for member in pool.members:
            addr = str(member.addr)
            col = self.table.member_slot(pool.name, addr)
            if self.member_state(pool, addr, col) in ("draining", "down"):
                continue
            weight = self.effective_weight(pool, member, col)
            if weight > 0:
                out.append((col, self.table.conns(col), weight))
        return out

    def _rebalance_step(self, pool: PoolConfig, policy: RebalanceConfig, elapsed: float, now: float) -> None:
        loads = self._loads(pool)
        episode = self._episodes.get(pool.name)
        # During an episode the fair shares are computed from the larger of the pool's
        # connections now and when it began: a client closed with 1012 counts until it is
        # back (clients may wait before reconnecting), so their absence is not read as a
        # shrinking pool that needs still more closes.
        total = max(sum(c for _, c, _ in loads), episode.total if episode is not None else 0)
        needed = _closes_needed(loads, policy.threshold, total)
        if not needed or (episode is not None and episode.moved >= episode.budget):
            if episode is not None:
                del self._episodes[pool.name]
                self._quiet_until[pool.name] = now + SETTLE
                why = "done" if not needed else "stopped at max_fraction"
                event(logging.INFO, "rebalance " + why, pool=pool.name, closes=episode.moved,
                      seconds=round(now - episode.started, 2))
            return
        if episode is None:
            if now < self._quiet_until.get(pool.name, 0.0):
                return  # the last episode's clients may still be coming back
            episode = self._episodes[pool.name] = _Episode(budget=_budget(total, policy), started=now, total=total)
            event(logging.INFO, "rebalance started", pool=pool.name, conns=total, closes_needed=needed,
                  budget=episode.budget)
        # A token bucket holding at most two ticks' worth (or one close), so a late tick
        # does not lose its share and a stall does not turn into a burst.
        episode.tokens = min(episode.tokens + policy.rate * elapsed, max(1.0, 2 * policy.rate * TICK))
        table = self.table
        rows = table.scan_rows
        if any(table.shed_wanted(col, row) > 0 for col, _, _ in loads for row in rows):
            return  # the last tick's sheds are not carried out yet: their counts would mislead
        while episode.tokens >= 1.0 - 1e-9 and episode.moved < episode.budget:
            col = _most_over(loads, policy.threshold, total)
            if col is None:
                break
            # The process holding the most of its WebSockets (only those can be shed).
            row = max(rows, key=lambda r: table.own_ws(col, r) - table.shed_wanted(col, r))
            if table.own_ws(col, row) - table.shed_wanted(col, row) <= 0:
                break
            table.ask_shed(row, col, 1)
            table.add_ctrl(col, REBALANCE_CLOSES)
            episode.tokens -= 1.0
            episode.moved += 1
            loads = [(c, n - 1 if c == col else n, w) for c, n, w in loads]

    # -- status (GET /api/pools) ---------------------------------------------------------
    def status(self) -> dict:
        table = self.table
        health = self.health.snapshot() if self.health is not None else {}
        pools = {}
        for pool in self.config.pools.values():
            members = []
            for member in pool.members:
                addr = str(member.addr)
                col = table.member_slot(pool.name, addr)
                rtt = table.ctrl(col, RTT_US)
                entry = {
                    "addr": addr,
                    "state": self.member_state(pool, addr, col),
                    "conns": table.conns(col),
                    "weight": self.weight(member, col),
                    "config_weight": member.weight,
                    "max_conns": member.max_conns,
                    "health": "down" if table.ctrl(col, HEALTH) == HEALTH_DOWN else "up",
                    "rtt_ms": round(rtt / 1000.0, 3) if rtt >= 0 else None,
                    "checks_ok": table.ctrl(col, CHECKS_OK),
                    "checks_failed": table.ctrl(col, CHECKS_FAILED),
                    "health_changes": table.ctrl(col, HEALTH_CHANGES),
                    "rebalance_closes": table.ctrl(col, REBALANCE_CLOSES),
                }
                ejected = table.counter_slots.get(ejected_key(pool.name, addr))
                entry["ejected_in"] = table.total(ejected) if ejected is not None else 0
                detail = health.get(pool.name, {}).get(addr)
                if detail:
                    entry["check"] = detail
                members.append(entry)
            episode = self._episodes.get(pool.name)
            counters = {}
            for name, family in (("queued_total", "wsproxy_pool_queued_total"),
                                 ("queue_rejects", "wsproxy_pool_queue_rejects_total"),
                                 ("hash_fallbacks", "wsproxy_pool_hash_fallbacks_total")):
                col = table.counter_slots.get((family, pool.name))
                counters[name] = table.total(col) if col is not None else 0
            pools[pool.name] = {
                "balance": pool.balance,
                "members": members,
                **counters,
                "health_check": pool.health.type if pool.health is not None else None,
                "rebalance": None if episode is None else {
                    "moved": episode.moved, "budget": episode.budget, "manual": episode.manual},
            }
        return {"generation": self.generation, "pools": pools}


def _budget(total: int, policy: RebalanceConfig) -> int:
    return max(1, math.floor(total * policy.max_fraction)) if policy.max_fraction > 0 else 0


def _fair(loads: list[tuple[int, int, float]], total: int | None = None) -> list[float]:
    if total is None:
        total = sum(c for _, c, _ in loads)
    weights = sum(w for _, _, w in loads)
    return [total * w / weights for _, _, w in loads] if weights else [0.0] * len(loads)


def _closes_needed(loads: list[tuple[int, int, float]], threshold: float, total: int | None = None) -> int:
    """Closes that bring every member within (1 + threshold) x its fair share, assuming each
    closed connection comes back to a member under its share (what least_conn does)."""
    if len(loads) < 2:
        return 0
    needed = 0
    for (_, conns, _), fair in zip(loads, _fair(loads, total)):
        limit = math.floor(fair * (1.0 + threshold))
        if conns > limit and conns - fair >= 1:
            needed += conns - max(limit, math.ceil(fair))
    return needed


def _most_over(loads: list[tuple[int, int, float]], threshold: float, total: int | None = None) -> int | None:
    """The column of the member furthest above its share beyond the threshold, or None."""
    best, best_ratio = None, 0.0
    for (col, conns, _), fair in zip(loads, _fair(loads, total)):
        limit = math.floor(fair * (1.0 + threshold))
        if conns > limit and conns - fair >= 1:
            ratio = conns / fair if fair > 0 else math.inf
            if ratio > best_ratio:
                best, best_ratio = col, ratio
    return best
