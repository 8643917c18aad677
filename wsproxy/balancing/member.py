"""Member: one upstream server of a pool, as every process of the node sees it.

Two kinds of state meet here:

- Node-wide, in the NodeTable (wsproxy/node/table.py), under the member's column ``col``:
  the connection count summed over every process (``active``), and the control fields the
  control plane writes: ADMIN (draining), HEALTH (active checks), UP_SINCE_MS (slow start
  starts), WEIGHT (the operator's weight). A member keeps its column across reloads.
- Per process, in this object: passive health (the failure streaks and the ejection with
  its backoff, see Pool), pick and failure counters. Passive state is deliberately not
  shared: each process ejects on what it saw itself (Envoy's outlier detection is per
  worker too); the admin API shows in how many processes a member is ejected through the
  ``("member_ejected", pool, addr)`` gauge.

The Pool changes a member (acquire/release, the passive-health calls); balancers only read
``active``, ``weight`` and ``max_conns``, which are the *effective* values: the operator's
weight when set, and both ramped during slow start. Those reads are on the handshake path,
so each is a couple of cell reads, and the clock is read only while a ramp is running.

Members hash by identity, so balancers may key their own bookkeeping on them.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

from wsproxy.node.table import (
    ADMIN,
    CTRL_FIELDS,
    DRAINING as ADMIN_DRAINING,
    ENABLED,
    HEALTH,
    HEALTH_DOWN,
    HEALTH_UP,
    UP_SINCE_MS,
    WEIGHT,
    NodeTable,
)

if TYPE_CHECKING:
    from wsproxy.config.schema import Address, MemberConfig

# member.state values (the admin API's words, CONFIG.md)
RAMP_FLOOR = 1 / 16  # the least share of its weight a member in slow start gets (HAProxy's 1/BE_WEIGHT_SCALE)
UP = "up"
DOWN = "down"
DRAINING = "draining"
SLOW_START = "slow_start"


class Member:
    __slots__ = (
        "config", "addr", "table", "col", "slow_start", "clock",
        "_cells", "_ctrl", "_up_since", "_weight_cell", "_rows", "_conn_cells", "_conn_cell",
        "_weight", "_max_conns", "_ramped_since",
        "ejected", "eject_cause", "ejections", "down_for", "down_until", "trial", "back_at", "ejected_col",
        "fail_streak", "handshake_streak",
        "picks", "connect_failures", "handshake_failures",
    )

    def __init__(self, config: MemberConfig, table: NodeTable | None = None, col: int = 0, *,
                 slow_start: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``table``/``col``: where the member's cells are (the Pool passes them); without a
        table the member gets a private one (balancer unit tests). ``slow_start``: the pool's
        ramp in seconds (0 = off). ``clock``: monotonic seconds, the clock of ``now_ms()``."""
        if table is None:
            table, col = NodeTable(rows=1, members=1, counters=1), 0
        self.config = config
        self.addr: Address = config.addr
        self.table = table
        self.col = col
        self.slow_start = slow_start
        self.clock = clock
        # The control fields are read straight from the cells (table.ctrl(col, F) per read
        # would add a call to every balancer comparison); ``_ctrl`` is col's first field.
        self._cells = table.cells
        self._ctrl = table._ctrl + col * CTRL_FIELDS
        # The cheap test before ramp() on the hot path: only a member that came back (an
        # UP_SINCE_MS, or back_at) can be ramping.
        self._up_since = self._ctrl + UP_SINCE_MS
        self._weight_cell = self._ctrl + WEIGHT
        self._rows: tuple[int, ...] | None = None  # the table.scan_rows _conn_cells is for
        self._conn_cells: tuple[int, ...] = ()
        self._conn_cell = -1  # the only one of them, when there is only one
        # The config's values; the operator's weight (table WEIGHT) wins over _weight.
        self._weight: int = config.weight
        self._max_conns: int = config.max_conns
        self._ramped_since = 0.0  # the start of the last ramp seen to finish (skips the clock)
        # Passive health, this process only (Pool.connect_failed / handshake_failed).
        self.ejected = False
        self.eject_cause = ""      # "connect" | "handshake": which kind of success brings it back
        self.ejections = 0         # ejections since the last success (the backoff exponent)
        self.down_for = 0.0        # length of the current ejection, seconds
        self.down_until = 0.0      # clock time of the next trial connection
        self.trial = False         # a trial was handed out since the last ejection
        self.back_at = 0.0         # clock time it came back from an ejection (slow start)
        self.ejected_col = -1      # the ("member_ejected", pool, addr) gauge; -1 = none
        self.fail_streak = 0       # connect failures since the last connect success
        self.handshake_streak = 0  # bad answers (5xx, no 101) since the last good one
        self.picks = 0             # times chosen by Pool.pick (for logs and the admin API)
        self.connect_failures = 0  # totals, never reset
        self.handshake_failures = 0

    # -- effective values (what balancers read) ---------------------------------------------

    @property
    def active(self) -> int:
        """Connections (and connects in progress) to this member, across the node."""
        # table.conns(col), inlined: balancers read this several times per pick. The cell
        # indexes (the table's layout: row r's count of col at _conns + r * members + col)
        # are rebuilt only when the table's set of live rows changes.
        if self.table.scan_rows is not self._rows:
            self._index_rows()
        if self._conn_cell >= 0:  # one process (workers = 1): one cell
            return self._cells[self._conn_cell]
        cells = self._cells
        total = 0
        for i in self._conn_cells:
            total += cells[i]
        return total

    def _index_rows(self) -> None:
        table = self.table
        self._rows = rows = table.scan_rows
        self._conn_cells = tuple(table._conns + row * table.members + self.col for row in rows)
        self._conn_cell = self._conn_cells[0] if len(rows) == 1 else -1

    @active.setter
    def active(self, value: int) -> None:
        # For tests and tools: make the node-wide count ``value`` by moving this process's.
        self.table.add_conns(self.col, value - self.table.conns(self.col))

    @property
    def own_active(self) -> int:
        """This process's share of ``active``."""
        return self.table.own_conns(self.col)

    @property
    def weight(self) -> float:
        """The operator's weight when set, else the config's; ramped during slow start.

        The ramp is fractional (a float while it lasts): rounded to integers, a weight-1
        member, the common case, would stay at 1 and never ramp. HAProxy gets the same
        resolution by scaling every weight by 16 (BE_WEIGHT_SCALE). Never below 1/16 of the
        weight, so a member coming back is not left out entirely."""
        weight = self._cells[self._weight_cell]
        if weight < 0:
            weight = self._weight
        if self.slow_start > 0.0 and weight > 0 and (self.back_at or self._cells[self._up_since]):
            ramp = self.ramp()
            if ramp < 1.0:
                return weight * max(ramp, RAMP_FLOOR)
        return weight

    @weight.setter
    def weight(self, value: int) -> None:
        # The config-level weight (tests; the operator's goes through the table's WEIGHT).
        self._weight = value

    @property
    def table_weight(self) -> int:
        """The weight without the slow-start ramp: for static tables (Maglev), which would
        move keys and be rebuilt at every ramp step (HAProxy's slowstart skips static
        algorithms too; Envoy ramps only round robin and least request)."""
        weight = self._cells[self._ctrl + WEIGHT]
        return self._weight if weight < 0 else weight

    @property
    def max_conns(self) -> int:
        """The member's limit; ramped during slow start, never below 1 (srv_dynamic_maxconn)."""
        if self.slow_start > 0.0 and (self.back_at or self._cells[self._up_since]):
            ramp = self.ramp()
            if ramp < 1.0:
                return max(1, int(self._max_conns * ramp))
        return self._max_conns

    @max_conns.setter
    def max_conns(self, value: int) -> None:
        self._max_conns = value

    @property
    def full(self) -> bool:
        return self.active >= self.max_conns

    def ramp(self) -> float:
        """Slow start progress, 0..1 (1 = full weight): linear since the member last came
        back up, from an active check (UP_SINCE_MS, node-wide) or from a passive ejection
        in this process (``back_at``), whichever is later. A member that was never down has
        no ramp (anchors-features.md §1c: HAProxy's ``slowstart`` only after a failure)."""
        since = self._cells[self._ctrl + UP_SINCE_MS] / 1000.0
        if self.back_at > since:
            since = self.back_at
        if since <= 0.0 or since == self._ramped_since:
            return 1.0
        elapsed = self.clock() - since
        if elapsed >= self.slow_start:
            self._ramped_since = since  # done: later reads skip the clock
            return 1.0
        return elapsed / self.slow_start if elapsed > 0.0 else 0.0

    # -- state -----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._cells[self._ctrl + ADMIN] == ADMIN_DRAINING

    @property
    def health_down(self) -> bool:
        """The active checks say down (node-wide)."""
        return self._cells[self._ctrl + HEALTH] == HEALTH_DOWN

    @property
    def state(self) -> str:
        """"draining" (operator) > "down" (active checks, or ejected in this process) >
        "slow_start" (ramping) > "up"."""
        cells, ctrl = self._cells, self._ctrl
        if cells[ctrl + ADMIN] == ADMIN_DRAINING:
            return DRAINING
        if self.ejected or cells[ctrl + HEALTH] == HEALTH_DOWN:
            return DOWN
        if self.slow_start > 0.0 and self.ramp() < 1.0:
            return SLOW_START
        return UP

    def in_service(self) -> bool:
        """Not draining and not down by the active checks (ADMIN and HEALTH both 0)."""
        cells, ctrl = self._cells, self._ctrl
        return cells[ctrl + ADMIN] == ENABLED and cells[ctrl + HEALTH] == HEALTH_UP

    def __repr__(self) -> str:
        return (
            f"<Member {self.addr} {self.state} active={self.active}/{self.max_conns}"
            f" weight={self.weight}>"
        )

