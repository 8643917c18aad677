"""LiveConnections: this process's WebSockets per member, and the closes the node asks for.

The control plane decides (node/control.py) and writes its decisions into the NodeTable; it
cannot reach another process's sockets. Every process therefore runs ``tick`` (every
100 ms, from the App) and carries out what concerns its own connections:

- drain: when a member's DRAIN_SEQ moves while it is DRAINING, each of this process's
  WebSockets on it gets Close 1012 (Service Restart) at a random moment within the drain's
  spread window, so clients reconnect over the window and not all at once (the thundering
  herd HAProxy's ``shutdown sessions`` causes; anchors-features.md §1d). ``enable`` during
  the window cancels the closes not yet sent.
- shed (rebalancing): when the control plane asks this row to close n connections of a
  member (``shed_req`` - ``shed_done``), close n of them with Close 1012, oldest first or
  at random (the pool's ``rebalance.order``), one ``shed_done`` per close.

A WebSocket whose close has begun (by anyone) is never picked again. Connections are kept
per member column in insertion-ordered dicts, so "oldest first" is iteration order.
"""

from __future__ import annotations

import heapq
import logging
import random
from typing import Callable

from wsproxy.logs import event
from wsproxy.node.table import ADMIN, DRAIN_SEQ, DRAIN_SPREAD_MS, DRAINING, SHED_ORDER, SHED_RANDOM, NodeTable

DRAIN_CODE = 1012
DRAIN_REASON = "member draining"
SHED_REASON = "rebalancing"


class LiveConnections:
    def __init__(self, table: NodeTable, on_close: Callable[[str, int], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.table = table
        self.by_col: dict[int, dict] = {}  # column -> {relay: None}, oldest first
        self.on_close = on_close  # (kind "drain" | "rebalance", column), for metrics
        self.rng = rng or random.Random()
        self._drain_seen: dict[int, int] = {}  # column -> DRAIN_SEQ acted upon
        self._scheduled: list[tuple[float, int, int, object]] = []  # heap of (due, tie, col, relay)
        self._tie = 0
        self.drain_closes = 0
        self.shed_closes = 0

    def add(self, col: int, relay) -> None:
        relays = self.by_col.get(col)
        if relays is None:
            relays = self.by_col[col] = {}
            self._drain_seen.setdefault(col, self.table.ctrl(col, DRAIN_SEQ))
        relays[relay] = None
        self.table.add_ws(col, 1)
        if self.table.ctrl(col, ADMIN) == DRAINING:
            # Picked just before the drain began: it goes at the next tick, like the others did.
            self._tie += 1
            heapq.heappush(self._scheduled, (0.0, self._tie, col, relay))

    def discard(self, col: int, relay) -> None:
        relays = self.by_col.get(col)
        if relays is not None and relays.pop(relay, 0) is None:
            self.table.add_ws(col, -1)
            if not relays:
                del self.by_col[col]

    # -- the periodic tick ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        table = self.table
        for col in list(self.by_col):
            seq = table.ctrl(col, DRAIN_SEQ)
            if seq != self._drain_seen.get(col):
                self._drain_seen[col] = seq
                if table.ctrl(col, ADMIN) == DRAINING:
                    self._schedule_drain(col, now, table.ctrl(col, DRAIN_SPREAD_MS) / 1000.0)
        # Shed requests are answered for every member this process knows, with WebSockets
        # here or not: one it cannot carry out (its last WebSocket closed meanwhile) is
        # settled at once, so the planner never waits on it.
        for col in range(len(table.member_slots)):
            if table.shed_wanted(col) > 0:
                self._shed(col)
        self._run_due(now)

    def _schedule_drain(self, col: int, now: float, spread: float) -> None:
        relays = self.by_col.get(col)
        if not relays:
            return
        for relay in relays:
            self._tie += 1
            due = now + (self.rng.uniform(0.0, spread) if spread > 0 else 0.0)
            heapq.heappush(self._scheduled, (due, self._tie, col, relay))
        event(logging.INFO, "draining: WebSockets to close", member_col=col, count=len(relays),
              spread_s=round(spread, 3))

    def _run_due(self, now: float) -> None:
        heap = self._scheduled
        while heap and heap[0][0] <= now:
            _due, _tie, col, relay = heapq.heappop(heap)
            if self.table.ctrl(col, ADMIN) != DRAINING:
                continue  # enabled again before its turn: this one stays
            if self._close(relay, col, "drain", DRAIN_REASON):
                self.drain_closes += 1

    def _shed(self, col: int) -> None:
        table = self.table
        relays = self.by_col.get(col)
        wanted = table.shed_wanted(col)
        candidates = [r for r in relays if _open(r)] if relays else []
        if table.ctrl(col, SHED_ORDER) == SHED_RANDOM:
            self.rng.shuffle(candidates)
        for relay in candidates[:wanted]:
            if self._close(relay, col, "rebalance", SHED_REASON):
                self.shed_closes += 1
            table.shed_one(col)
        if table.shed_wanted(col) > 0:
            table.cancel_shed(col)  # fewer open connections here than asked: the rest lapses

    def _close(self, relay, col: int, kind: str, reason: str) -> bool:
        if not _open(relay):
            return False
        relay.close_both(DRAIN_CODE, reason)
        if self.on_close is not None:
            self.on_close(kind, col)
        return True

    def close_all(self) -> None:
        """Forget scheduled work (the process is stopping; App.stop closes the relays)."""
        self._scheduled.clear()


def _open(relay) -> bool:
    """Not closing yet: no Close seen or sent either way, and both legs still there."""
    return relay.closed_by is None and not relay.done.done()
