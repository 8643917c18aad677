"""Pool: a pool's members, their availability, and the balancer that chooses among them.

The Pool decides *who may* take a connection; the balancer only decides *which one* of
those. A member may take a new connection when it is in service (not draining, not down by
the active checks: the control plane's ADMIN and HEALTH cells in the NodeTable), not
ejected by passive health in this process (or due for its trial), not already tried for
this request, and below its effective max_conns. Connection counts live in the NodeTable
(node-wide, one row per process), so max_conns and least_conn hold per node.

Passive health (anchors-features.md §1c, "Passive health / outlier": HAProxy's ``observe``
with ``error-limit``, nginx's ``max_fails``, Envoy's outlier detection) is per process, as
Envoy's is per worker: consecutive connect failures, or consecutive bad answers
(``handshake_failed``: a 5xx, or no 101 to a WebSocket upgrade; see ``answer_failed``),
reaching ``fail_threshold`` eject the member for ``down_time``. After that it gets one trial
connection per ejection; a failed trial ejects it again for twice as long, up to
``down_time_max`` (exponential backoff, as Envoy's ``max_ejection_time``); a success brings
it back and resets the backoff. A member ejected for bad answers comes back only on a good
answer, not on a mere TCP connect. While a member is ejected this process holds +1 in the
``("member_ejected", pool, addr)`` gauge, so the admin API can say "down (passive) in k
processes". Every transition returns True so the caller logs it (wsproxy/health/passive.py
does).

Caller protocol (the I/O shell, one Session):
    member = pool.pick(avoid=tried, key=k, prefer=p)
        # k: the request's hash key as bytes, or None; p: the member its sticky cookie names.
        # None -> pool.can_queue(tried) ? wait in the queue : answer 503 (pool.why_unavailable)
    pool.acquire(member)                     # before connecting, so max_conns counts connects too
    ...connect...  -> pool.connect_ok(member)  or  pool.connect_failed(member) (log if True)
    ...answer...   -> pool.handshake_ok(member) or pool.handshake_failed(member) (log if True)
    pool.release(member)                     # when that connection ends, whatever happened

The queue (``queue = { size, timeout }``, HAProxy's backend queue): when every member that
could take a request is full, the request waits. ``enqueue(deliver, avoid)`` registers a
callback; ``release`` hands the freed slot straight to the first waiter that may use that
member (acquired on its behalf, so no newcomer can take the slot in between: the queue is
FIFO). ``deliver(member)`` returns False when the waiter gave up meanwhile; the slot then
goes to the next waiter. Timers and futures belong to the shell (proxy/upstream.py). The
queue is per process: only this process's releases wake its waiters.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Collection, Iterable

from wsproxy.balancing import BALANCERS, Balancer
from wsproxy.balancing.hashing import MaglevHash
from wsproxy.balancing.member import Member
from wsproxy.balancing.sticky import StickyCookie
from wsproxy.config.schema import PoolConfig as _PoolConfig, defaults
from wsproxy.errors import ConfigError
from wsproxy.node.table import ADMIN, COUNTER, ENABLED, GAUGE, HEALTH, HEALTH_UP, NodeTable

if TYPE_CHECKING:
    from wsproxy.config.schema import PoolConfig

_DEFAULTS = defaults(_PoolConfig)
EJECTED_GAUGE = "member_ejected"  # table.counter_slot((EJECTED_GAUGE, pool, addr), GAUGE)


def answer_failed(status: int, upgrade: bool) -> bool:
    """Does a member's answer count against it (``Pool.handshake_failed``)?

    A 5xx does (HAProxy's ``observe layer7``, Envoy's consecutive 5xx), except 501 and 505
    to a plain request, which answer the request's method or version (HAProxy leaves them
    out too). A WebSocket upgrade answered with anything but 101 does too: the member does
    not speak WebSocket there (a 200 page, a redirect to a login). A 4xx does not: it is the
    client's doing (bad token, unknown path), and counting it would let any client eject
    every member with a few bad upgrades.
    """
    if upgrade:
        return status != 101 and not 400 <= status < 500
    return status >= 500 and status not in (501, 505)


def register(table: NodeTable, config: PoolConfig) -> list[tuple[int, int]]:
    """Assign the pool's table slots: (member column, ejected-gauge column) per member.

    The process that builds the table calls this (through Pool or directly) before workers
    fork, so every process finds the same slots; afterwards it is only a lookup.
    """
    slots = []
    for member in config.members:
        addr = str(member.addr)
        slots.append((table.member_slot(config.name, addr),
                      table.counter_slot((EJECTED_GAUGE, config.name, addr), GAUGE)))
    for family in POOL_COUNTERS:
        table.counter_slot((family, config.name), COUNTER)
    return slots


# The pool's own counters, node-wide in the table (keys as node/metrics.py names its series:
# rendered there as wsproxy_pool_*_total{pool}, and in /api/pools).
POOL_QUEUED = "wsproxy_pool_queued_total"  # requests that waited in the queue
POOL_QUEUE_REJECTS = "wsproxy_pool_queue_rejects_total"  # 503s: queue full or wait timed out
POOL_HASH_FALLBACKS = "wsproxy_pool_hash_fallbacks_total"  # balance = hash: picks without a key
POOL_COUNTERS = (POOL_QUEUED, POOL_QUEUE_REJECTS, POOL_HASH_FALLBACKS)


class Pool:
    def __init__(self, config: PoolConfig, table: NodeTable | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``table``: the node's NodeTable; None makes a private one (unit tests, one-off
        tools), where the counts are this Pool's alone. ``clock``: monotonic seconds, the
        clock of ``now_ms()`` (UP_SINCE_MS is compared with it)."""
        self.config = config
        self.name: str = config.name
        self.clock = clock
        if table is None:
            size = max(1, len(config.members))
            table = NodeTable(rows=1, members=size, counters=size + len(POOL_COUNTERS))
        self.table = table
        # Options read once (tests may pass a config stand-in without the newer fields).
        self.fail_threshold: int = config.fail_threshold
        self.down_time: float = config.down_time
        self.down_time_max: float = max(_option(config, "down_time_max"), config.down_time)
        self.slow_start: float = _option(config, "slow_start")
        members = []
        for member_config, (col, gauge) in zip(config.members, register(table, config)):
            member = Member(member_config, table, col, slow_start=self.slow_start, clock=clock)
            member.ejected_col = gauge
            members.append(member)
        self.members: tuple[Member, ...] = tuple(members)
        try:
            balancer_class = BALANCERS[config.balance]
        except KeyError:
            known = ", ".join(sorted(BALANCERS))
            raise ConfigError(
                f"pools.{config.name}.balance",
                f"balancer {config.balance!r} is not available; expected one of {known}",
            ) from None
        self.balancer: Balancer = balancer_class(self.members)
        # A balancer with ``wants_key`` (balance = "hash") is handed each pick's key. A pick
        # without one (the request lacks the header, cookie, ...) goes to ``hash_fallback``
        # instead, counted in ``hash_fallbacks`` for the logs and the admin API.
        self._wants_key: bool = getattr(self.balancer, "wants_key", False)
        self.fallback: Balancer | None = self._fallback_balancer(config) if self._wants_key else None
        self.hash_fallbacks = 0
        self.tls = None  # tls.MemberTls when the pool has tls (app.py builds it: it knows where the files are)
        self._key_table: MaglevHash | None = None  # for plugin hash keys on pools of other balancers
        self.sticky: StickyCookie | None = (
            StickyCookie(config.name, config.persist, self.members) if config.persist is not None else None
        )
        self.waiting: deque[_Waiter] = deque()
        self.queued_total = 0  # requests that had to wait for a slot (this process)
        self.queue_rejects = 0  # 503s: the queue was full, or a wait timed out (this process)
        slots = self.table.counter_slots
        self._queued_col, self._rejects_col, self._fallbacks_col = (
            slots[(family, config.name)] for family in POOL_COUNTERS)
        # Optional hooks, looked up once rather than on every acquire/release.
        balancers = (self.balancer, self.fallback)
        self._on_take = _chain(getattr(b, "on_take", None) for b in balancers)
        self._on_drop = _chain(getattr(b, "on_drop", None) for b in balancers)

    def _fallback_balancer(self, config: PoolConfig) -> Balancer:
        name = config.hash_fallback
        fallback_class = BALANCERS.get(name)
        if fallback_class is None or getattr(fallback_class, "wants_key", False):
            known = ", ".join(sorted(n for n, c in BALANCERS.items() if not getattr(c, "wants_key", False)))
            raise ConfigError(
                f"pools.{config.name}.hash_fallback",
                f"balancer {name!r} cannot be the hash fallback; expected one of {known}",
            )
        return fallback_class(self.members)

    # -- choosing -----------------------------------------------------------------------

    def pick(self, avoid: Collection[Member] = (), key: bytes | None = None,
             prefer: Member | None = None, plugin_key: bytes | None = None) -> Member | None:
        """A member for a new connection, or None when none is available.

        ``key`` (the request's hash key) is for balance = "hash" and ignored otherwise; None
        there means the request has no key, and ``hash_fallback`` picks instead.
        ``prefer`` (the member a sticky cookie or a plugin names) wins when it may take the
        connection; when it is draining, down, full or already tried, the balancer picks as
        if it were not given. ``plugin_key`` (a plugin's ``ctx:hash_key``) hashes with
        Maglev whatever the pool's balancer, the way iRules ``persist hash`` does.
        """
        now = self.clock()
        eligible = self._eligible
        candidates = [m for m in self.members if m not in avoid and eligible(m, now)]
        if not candidates:
            return None
        if prefer is not None and prefer in candidates:
            member = prefer
        elif plugin_key is not None:
            if self._key_table is None:
                self._key_table = self.balancer if self._wants_key else MaglevHash(self.members)
            member = self._key_table.pick(candidates, plugin_key)  # type: ignore[call-arg]
        elif not self._wants_key:
            member = self.balancer.pick(candidates)
        elif key is not None:
            member = self.balancer.pick(candidates, key)  # type: ignore[call-arg]
        else:
            assert self.fallback is not None
            self.hash_fallbacks += 1
            self.table.add(self._fallbacks_col)
            member = self.fallback.pick(candidates)
        if member.ejected:
            self._trial(member, now)
        member.picks += 1
        return member

    def _trial(self, member: Member, now: float) -> None:
        # This pick is the ejected member's trial: no other trial until its ejection time
        # passes again, even if this attempt is abandoned without a verdict.
        member.trial = True
        member.down_until = now + member.down_for

    def member_named(self, addr: str) -> Member | None:
        """The member at ``addr`` ("host:port", as config and plugins write it), or None."""
        for member in self.members:
            if str(member.addr) == addr:
                return member
        return None

    def available(self, member: Member) -> bool:
        """May ``member`` take a new connection now (in service, not ejected or due for a
        trial, not full)?"""
        return self._eligible(member, self.clock())

    @staticmethod
    def _eligible(member: Member, now: float) -> bool:
        # The hot path (every member, every pick): Member.in_service() and the fast case of
        # Member.max_conns read inline.
        cells, ctrl = member._cells, member._ctrl
        if cells[ctrl + ADMIN] != ENABLED or cells[ctrl + HEALTH] != HEALTH_UP:
            return False
        if member.ejected and now < member.down_until:
            return False
        return member.active < (member.max_conns if member.slow_start > 0.0 else member._max_conns)

    def _serving(self, member: Member, now: float) -> bool:
        """In service and not ejected (or due for a trial), whether full or not."""
        return member.in_service() and not (member.ejected and now < member.down_until)

    def why_unavailable(self, avoid: Collection[Member] = ()) -> str:
        """Why pick() found nobody, short enough for a log line or a 503 reason."""
        now = self.clock()
        total = len(self.members)
        if total == 0:
            return "the pool has no members"
        ejected = failing = draining = full = tried = available = 0
        retry_in: float | None = None
        for m in self.members:
            if m in avoid:
                tried += 1
            elif m.draining:
                draining += 1
            elif m.health_down:
                failing += 1
            elif m.ejected and now < m.down_until:
                ejected += 1
                wait = m.down_until - now
                retry_in = wait if retry_in is None else min(retry_in, wait)
            elif m.active >= m.max_conns:
                full += 1
            else:
                available += 1
        down_text = f"down (retry in {retry_in:.1f}s)" if retry_in is not None else "down"
        parts = [
            (ejected, down_text),
            (failing, "down (health check)"),
            (draining, "draining"),
            (full, "full"),
            (tried, "already tried"),
        ]
        for count, text in parts:
            if count == total:
                if total == 1:
                    return f"the only member is {text}"
                return f"all {total} members are {text}"
        reasons = [f"{count} {text}" for count, text in parts if count]
        if available:
            reasons.insert(0, f"{available} of {total} available")
        return ", ".join(reasons)

    # -- connection accounting ----------------------------------------------------------

    # acquire/release are table.add_conns(col, +-1) on this process's row, inlined (they run
    # for every connection): the cell of row r for col is at _conns + r * members + col.

    def acquire(self, member: Member) -> None:
        table = self.table
        table.cells[table._conns + table.row * table.members + member.col] += 1
        if self._on_take is not None:
            self._on_take(member)

    def release(self, member: Member) -> None:
        table = self.table
        cells, i = table.cells, table._conns + table.row * table.members + member.col
        # Never below 0 in this process's row: a double release must not make a member look
        # emptier than it is (nor take away another process's connection).
        if cells[i] <= 0:
            return
        cells[i] -= 1
        if self._on_drop is not None:
            self._on_drop(member)
        if self.waiting:
            now = self.clock()
            if self._eligible(member, now):
                self._hand_over(member, now)

    def _drop(self, member: Member) -> None:
        self.table.add_conns(member.col, -1)
        if self._on_drop is not None:
            self._on_drop(member)

    # -- the queue ----------------------------------------------------------------------

    def can_queue(self, avoid: Collection[Member] = ()) -> bool:
        """True when waiting makes sense: some member not yet tried is full but in service
        (a slot will free up), as opposed to every one being down or draining."""
        now = self.clock()
        return any(
            m.active >= m.max_conns and self._serving(m, now)
            for m in self.members if m not in avoid
        )

    @property
    def queue_full(self) -> bool:
        return len(self.waiting) >= self.config.queue.size

    def enqueue(self, deliver: Callable[[Member], bool], avoid: Collection[Member] = ()) -> _Waiter:
        """Wait for a slot: ``deliver(member)`` is called with an acquired member, in FIFO order."""
        waiter = _Waiter(deliver, tuple(avoid))
        self.waiting.append(waiter)
        self.queued_total += 1
        self.table.add(self._queued_col)
        return waiter

    def queue_rejected(self) -> None:
        """A request got 503 from the queue (full, or its wait timed out)."""
        self.queue_rejects += 1
        self.table.add(self._rejects_col)

    def dequeue(self, waiter: _Waiter) -> None:
        """The waiter is done (served, timed out or gone); removing twice is harmless."""
        try:
            self.waiting.remove(waiter)
        except ValueError:
            pass

    def _hand_over(self, member: Member, now: float) -> None:
        for waiter in list(self.waiting):
            if member in waiter.avoid:
                continue  # it already failed to connect there; the slot goes to the next one
            self.waiting.remove(waiter)
            self.acquire(member)
            member.picks += 1
            if member.ejected:
                self._trial(member, now)
            if waiter.deliver(member):
                return
            # The waiter gave up while its wake-up was on its way: undo and try the next.
            self._drop(member)

    def retry_after(self, avoid: Collection[Member] = ()) -> int:
        """Seconds for a 503's Retry-After: the next ejected member's trial, else the queue timeout."""
        now = self.clock()
        waits = [m.down_until - now for m in self.members
                 if m not in avoid and m.ejected and m.down_until > now and m.in_service()]
        if waits and not self.can_queue(avoid):
            return max(1, math.ceil(min(waits)))
        return max(1, math.ceil(self.config.queue.timeout))

    # -- passive health -----------------------------------------------------------------

    def connect_failed(self, member: Member) -> bool:
        """Count a failed connect. True when it ejected the member (log it, with
        ``member.down_for``)."""
        member.connect_failures += 1
        member.fail_streak += 1
        return self._failed(member, member.fail_streak, "connect")

    def handshake_failed(self, member: Member) -> bool:
        """Count a bad answer (``answer_failed``: a 5xx, no 101 to an upgrade, or no usable
        answer at all). True when it ejected the member (log it)."""
        member.handshake_failures += 1
        member.handshake_streak += 1
        return self._failed(member, member.handshake_streak, "handshake")

    def connect_ok(self, member: Member) -> bool:
        """Count a successful connect. True when it brought the member back (log it); a
        member ejected for its answers stays out until one is good (``handshake_ok``)."""
        member.fail_streak = 0
        if member.ejected and member.eject_cause == "connect":
            return self._back(member)
        return False

    def handshake_ok(self, member: Member) -> bool:
        """Count a good answer. True when it brought the member back (log it)."""
        member.handshake_streak = 0
        if member.ejected:
            return self._back(member)
        return False

    def _failed(self, member: Member, streak: int, cause: str) -> bool:
        if member.ejected:
            if not member.trial:
                return False  # from a connection begun before the ejection: nothing new
            return self._eject(member, cause)  # the trial failed: out again, for longer
        if 0 < self.fail_threshold <= streak:
            return self._eject(member, cause)
        return False

    def _eject(self, member: Member, cause: str) -> bool:
        if not member.ejected:
            member.ejected = True
            self._gauge(member, 1)
        member.ejections += 1
        # down_time, doubled on each ejection without a success in between, capped.
        if member.ejections == 1:
            member.down_for = self.down_time
        else:
            member.down_for = min(member.down_for * 2, self.down_time_max)
        member.down_until = self.clock() + member.down_for
        member.eject_cause = cause
        member.trial = False
        return True

    def _back(self, member: Member) -> bool:
        member.ejected = False
        member.trial = False
        member.ejections = 0
        member.down_for = 0.0
        member.down_until = 0.0
        member.eject_cause = ""
        self._gauge(member, -1)
        if self.slow_start > 0.0:
            member.back_at = self.clock()  # slow start in this process (Member.ramp)
        return True

    def close(self) -> None:
        """This Pool is being replaced (a reload in the same process): take its ejections
        out of the gauge. Connection counts stay: they live in the table, under columns the
        new Pool shares, and live connections still release through this Pool."""
        for member in self.members:
            if member.ejected:
                self._gauge(member, -1)
            member.ejected_col = -1  # counted no more, whatever happens to it later

    def _gauge(self, member: Member, delta: int) -> None:
        if member.ejected_col >= 0:
            self.table.add(member.ejected_col, delta)

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.config.balance} {len(self.members)} members>"


class _Waiter:
    __slots__ = ("deliver", "avoid")

    def __init__(self, deliver: Callable[[Member], bool], avoid: tuple[Member, ...]) -> None:
        self.deliver = deliver
        self.avoid = avoid


def _option(config, name: str):
    return getattr(config, name, _DEFAULTS[name])


def _chain(hooks: Iterable[Callable[[Member], None] | None]) -> Callable[[Member], None] | None:
    """One callable for the hooks that exist (None when there are none, so it costs nothing)."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def call_all(member: Member) -> None:
        for hook in present:
            hook(member)

    return call_all
