"""NodeTable: the state every process of one node shares, in one anonymous shared mmap.

Why shared memory and one writer per cell: least_conn and max_conns must hold per node,
not per worker (nginx's per-worker ``max_conns`` trap, anchors-features.md §4.2), and a
worker that crashes must not leave counts behind (HAProxy's negative ``conn_cur``, APISIX's
decrement leak). So no cell is ever incremented by two processes: each process owns one
*row* and counts only its own connections there; a member's node-wide count is the sum of
the rows. When a process dies its row is zeroed (``retire_row``), so its counts vanish
with it: never negative, never stuck.

Layout (all int64, 8-byte aligned, so a store is one machine write that readers never see
half done):

    member control  MAX_MEMBERS x CTRL_FIELDS   written only by the control plane
    conns           MAX_ROWS x MAX_MEMBERS      row r written only by process r
    shed_req        MAX_ROWS x MAX_MEMBERS      written by the control plane: "row r, close n"
    shed_done       MAX_ROWS x MAX_MEMBERS      written by process r: how many it closed
    websockets      MAX_ROWS x MAX_MEMBERS      row r written only by process r: its open WebSockets
    counters        MAX_ROWS x MAX_COUNTERS     row r written only by process r (metrics)
    proc            MAX_ROWS x PROC_FIELDS      pid and generation of the row's process

Row 0 is the control plane's (the master, or the only process when workers = 1); it also
keeps the monotonic counters of retired rows, so /metrics never goes backwards.

Slots (which column a member or a counter uses) are assigned by the process that built the
table, before any worker forks, and inherited by fork; a worker only looks them up. A
member keeps its column across reloads (same pool name and address), so the connections of
an old generation still count for the new one.
"""

from __future__ import annotations

import mmap
import time

MAX_ROWS = 64  # processes alive at once: workers of every live generation, plus row 0
MAX_MEMBERS = 2048  # (pool, member) pairs over the life of the master
MAX_COUNTERS = 4096  # metric series

# Member control fields (one block per member column).
ADMIN = 0  # ENABLED | DRAINING (the operator's wish)
HEALTH = 1  # HEALTH_UP | HEALTH_DOWN (active checks; up when the pool has none)
UP_SINCE_MS = 2  # monotonic ms when the member last came back up (slow start); 0 = never went down
WEIGHT = 3  # the operator's weight; -1 = the config's
RTT_US = 4  # round trip of the last passing check, in µs; -1 = none yet
CHECKS_OK = 5
CHECKS_FAILED = 6
HEALTH_CHANGES = 7  # up/down transitions seen by the active checks
DRAIN_SEQ = 8  # +1 on every drain: workers start closing the member's WebSockets when it moves
DRAIN_SPREAD_MS = 9  # the window those closes are spread over
REBALANCE_CLOSES = 10  # closes asked of this member by rebalancing (node-wide)
SHED_ORDER = 11  # SHED_OLDEST | SHED_RANDOM: which of the member's connections a shed closes first
CTRL_FIELDS = 16

ENABLED, DRAINING = 0, 1
SHED_OLDEST, SHED_RANDOM = 0, 1
HEALTH_UP, HEALTH_DOWN = 0, 1

# Per-row process fields.
PID = 0
GENERATION = 1
STARTED_MS = 2
PROC_FIELDS = 4

COUNTER = "counter"  # monotonic: kept in row 0 when its row retires
GAUGE = "gauge"  # goes up and down: dropped when its row retires


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms: the same clock in every process of the node."""
    return int(time.monotonic() * 1000)


class NodeTable:
    """Shared int64 cells plus the slot maps. Build it before forking; ``row`` is the calling
    process's row (0 in the control plane; set by the master in each worker it forks)."""

    def __init__(self, rows: int = MAX_ROWS, members: int = MAX_MEMBERS, counters: int = MAX_COUNTERS) -> None:
        self.rows, self.members, self.counters = rows, members, counters
        self._ctrl = 0
        self._conns = self._ctrl + members * CTRL_FIELDS
        self._shed_req = self._conns + rows * members
        self._shed_done = self._shed_req + rows * members
        self._ws = self._shed_done + rows * members
        self._counters = self._ws + rows * members
        self._proc = self._counters + rows * counters
        cells = self._proc + rows * PROC_FIELDS
        # Anonymous and MAP_SHARED: children made by fork() see the same pages; no file, no name.
        self._map = mmap.mmap(-1, cells * 8, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.cells = memoryview(self._map).cast("q")
        self.row = 0
        # Rows summed by conns()/total(): row 0 plus the rows with a process. Refreshed by
        # refresh_rows() (every control tick, and whenever this process claims or retires a
        # row), so a pick reads a few cells rather than MAX_ROWS.
        self.scan_rows: tuple[int, ...] = (0,)
        self.member_slots: dict[tuple[str, str], int] = {}  # (pool, "host:port") -> column
        self.counter_slots: dict[tuple, int] = {}  # (name, labels...) -> column
        self.counter_kinds: list[str] = []  # by column
        for col in range(members):
            self.cells[self._ctrl + col * CTRL_FIELDS + WEIGHT] = -1
            self.cells[self._ctrl + col * CTRL_FIELDS + RTT_US] = -1

    # -- slots (assigned before workers fork) ------------------------------------------------
    def member_slot(self, pool: str, addr: str) -> int:
        """The column of member ``addr`` of ``pool``, assigned on first use."""
        key = (pool, addr)
        col = self.member_slots.get(key)
        if col is None:
            col = len(self.member_slots)
            if col >= self.members:
                raise RuntimeError("node table full: more than %d pool members over this run" % self.members)
            self.member_slots[key] = col
        return col

    def counter_slot(self, key: tuple, kind: str = COUNTER) -> int:
        """The column of metric series ``key`` (name, then label values), assigned on first use."""
        col = self.counter_slots.get(key)
        if col is None:
            col = len(self.counter_slots)
            if col >= self.counters:
                raise RuntimeError("node table full: more than %d metric series" % self.counters)
            self.counter_slots[key] = col
            self.counter_kinds.append(kind)
        return col

    # -- member control (control plane writes, everyone reads) ------------------------------
    def ctrl(self, col: int, field: int) -> int:
        return self.cells[self._ctrl + col * CTRL_FIELDS + field]

    def set_ctrl(self, col: int, field: int, value: int) -> None:
        self.cells[self._ctrl + col * CTRL_FIELDS + field] = value

    def add_ctrl(self, col: int, field: int, delta: int = 1) -> None:
        self.cells[self._ctrl + col * CTRL_FIELDS + field] += delta

    # -- connection counts -------------------------------------------------------------------
    def conns(self, col: int) -> int:
        """Connections to member ``col`` across every process of the node."""
        cells, base, step = self.cells, self._conns + col, self.members
        total = 0
        for row in self.scan_rows:
            total += cells[base + row * step]
        return total

    def own_conns(self, col: int, row: int | None = None) -> int:
        return self.cells[self._conns + (self.row if row is None else row) * self.members + col]

    def add_conns(self, col: int, delta: int) -> None:
        """This process's count for member ``col`` (never below zero)."""
        i = self._conns + self.row * self.members + col
        value = self.cells[i] + delta
        self.cells[i] = value if value > 0 else 0

    # -- WebSockets (what a shed can close; conns also counts HTTP requests and tcp) ---------
    def add_ws(self, col: int, delta: int) -> None:
        i = self._ws + self.row * self.members + col
        value = self.cells[i] + delta
        self.cells[i] = value if value > 0 else 0

    def own_ws(self, col: int, row: int | None = None) -> int:
        return self.cells[self._ws + (self.row if row is None else row) * self.members + col]

    # -- shedding: the control plane asks row r to close n of member c's connections --------
    def shed_wanted(self, col: int, row: int | None = None) -> int:
        r = self.row if row is None else row
        i = r * self.members + col
        return self.cells[self._shed_req + i] - self.cells[self._shed_done + i]

    def ask_shed(self, row: int, col: int, count: int) -> None:
        self.cells[self._shed_req + row * self.members + col] += count

    def shed_one(self, col: int) -> None:
        self.cells[self._shed_done + self.row * self.members + col] += 1

    def cancel_shed(self, col: int) -> None:
        """This process has nothing (left) to close there: the request is settled."""
        i = self.row * self.members + col
        self.cells[self._shed_done + i] = self.cells[self._shed_req + i]

    # -- counters (metrics) ------------------------------------------------------------------
    def add(self, col: int, delta: int = 1) -> None:
        self.cells[self._counters + self.row * self.counters + col] += delta

    def total(self, col: int) -> int:
        cells, base, step = self.cells, self._counters + col, self.counters
        total = 0
        for row in self.scan_rows:
            total += cells[base + row * step]
        return total

    # -- rows --------------------------------------------------------------------------------
    def claim_row(self, pid: int, generation: int) -> int:
        """A free row for a new process (called by the control plane before forking it)."""
        for row in range(1, self.rows):
            if self.cells[self._proc + row * PROC_FIELDS + PID] == 0:
                base = self._proc + row * PROC_FIELDS
                self.cells[base + PID] = pid or -1
                self.cells[base + GENERATION] = generation
                self.cells[base + STARTED_MS] = now_ms()
                self.refresh_rows()
                return row
        raise RuntimeError("node table full: more than %d processes alive" % (self.rows - 1))

    def set_row_pid(self, row: int, pid: int) -> None:
        self.cells[self._proc + row * PROC_FIELDS + PID] = pid

    def row_pid(self, row: int) -> int:
        return self.cells[self._proc + row * PROC_FIELDS + PID]

    def row_generation(self, row: int) -> int:
        return self.cells[self._proc + row * PROC_FIELDS + GENERATION]

    def live_rows(self) -> list[int]:
        return [r for r in range(1, self.rows) if self.cells[self._proc + r * PROC_FIELDS + PID] != 0]

    def refresh_rows(self) -> None:
        rows = {0, self.row, *self.live_rows()}
        self.scan_rows = tuple(sorted(rows))

    def retire_row(self, row: int) -> None:
        """Process ``row`` is gone (exited or crashed): its connections no longer exist, its
        unmet shed requests lapse, its monotonic counters move to row 0."""
        if row == 0:
            return
        cells = self.cells
        conns = self._conns + row * self.members
        ws = self._ws + row * self.members
        for col in range(self.members):
            cells[conns + col] = 0
            cells[ws + col] = 0
            i = row * self.members + col
            cells[self._shed_done + i] = cells[self._shed_req + i]
        base, keep = self._counters + row * self.counters, self._counters
        for col, kind in enumerate(self.counter_kinds):
            if kind == COUNTER:
                cells[keep + col] += cells[base + col]
            cells[base + col] = 0
        proc = self._proc + row * PROC_FIELDS
        for field in range(PROC_FIELDS):
            cells[proc + field] = 0
        self.refresh_rows()

    def close(self) -> None:
        self.cells.release()
        self._map.close()
