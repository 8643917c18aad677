"""Pool: a pool's members, their availability, and the balancer that chooses among them.

The Pool decides *who may* take a connection (up, not full, not already tried); the
balancer only decides *which one* of those. Passive health lives here too: consecutive
connect failures mark a member down for ``down_time``; after that it gets one trial
connection per ``down_time`` and is up again only when a connect succeeds.

Caller protocol (the I/O shell, one Session):
    member = pool.pick(avoid=tried, key=k, prefer=p)
        # k: the request's hash key as bytes, or None; p: the member its sticky cookie names.
        # None -> pool.can_queue(tried) ? wait in the queue : answer 503 (pool.why_unavailable)
    pool.acquire(member)                     # before connecting, so max_conns counts connects too
    ...connect...  -> pool.connect_ok(member)  or  pool.connect_failed(member) (log if True)
    pool.release(member)                     # when that connection ends, whatever happened

The queue (``queue = { size, timeout }``, HAProxy's backend queue): when every member that
could take a request is full, the request waits. ``enqueue(deliver, avoid)`` registers a
callback; ``release`` hands the freed slot straight to the first waiter that may use that
member (acquired on its behalf, so no newcomer can take the slot in between: the queue is
FIFO). ``deliver(member)`` returns False when the waiter gave up meanwhile; the slot then
goes to the next waiter. Timers and futures belong to the shell (proxy/upstream.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Collection, Iterable

from wsproxy.balancing import BALANCERS, Balancer
from wsproxy.balancing.hashing import MaglevHash
from wsproxy.balancing.member import DOWN, UP, Member
from wsproxy.balancing.sticky import StickyCookie
from wsproxy.errors import ConfigError

if TYPE_CHECKING:
    from wsproxy.config.schema import PoolConfig


class Pool:
    def __init__(self, config: PoolConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.name: str = config.name
        self.clock = clock
        self.members: tuple[Member, ...] = tuple(Member(m) for m in config.members)
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
        self._key_table: MaglevHash | None = None  # for plugin hash keys on pools of other balancers
        self.sticky: StickyCookie | None = (
            StickyCookie(config.name, config.persist, self.members) if config.persist is not None else None
        )
        self.waiting: deque[_Waiter] = deque()
        self.queued_total = 0  # requests that had to wait for a slot
        self.queue_rejects = 0  # 503s: the queue was full, or a wait timed out
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
        connection; when it is down, full or already tried, the balancer picks as if it were
        not given. ``plugin_key`` (a plugin's ``ctx:hash_key``) hashes with Maglev whatever
        the pool's balancer, the way iRules ``persist hash`` does.
        """
        now = self.clock()
        candidates = [m for m in self.members if self._eligible(m, now) and m not in avoid]
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
            member = self.fallback.pick(candidates)
        if member.state == DOWN:
            # This pick is the member's trial: no other trial until down_time passes again,
            # even if this attempt is abandoned without connect_ok/connect_failed.
            member.down_until = now + self.config.down_time
        member.picks += 1
        return member

    def member_named(self, addr: str) -> Member | None:
        """The member at ``addr`` ("host:port", as config and plugins write it), or None."""
        for member in self.members:
            if str(member.addr) == addr:
                return member
        return None

    def available(self, member: Member) -> bool:
        """May ``member`` take a new connection now (up, or due for a retry, and not full)?"""
        return self._eligible(member, self.clock())

    def _eligible(self, member: Member, now: float) -> bool:
        if member.active >= member.max_conns:
            return False
        if member.state == UP:
            return True
        return member.state == DOWN and now >= member.down_until

    def why_unavailable(self, avoid: Collection[Member] = ()) -> str:
        """Why pick() found nobody, short enough for a log line or a 503 reason."""
        now = self.clock()
        total = len(self.members)
        if total == 0:
            return "the pool has no members"
        down = full = tried = other = available = 0
        retry_in: float | None = None
        for m in self.members:
            if m in avoid:
                tried += 1
            elif m.state == DOWN and now < m.down_until:
                down += 1
                wait = m.down_until - now
                retry_in = wait if retry_in is None else min(retry_in, wait)
            elif m.active >= m.max_conns:
                full += 1
            elif m.state in (UP, DOWN):
                available += 1
            else:
                other += 1  # a state this module does not manage (e.g. draining)
        down_text = f"down (retry in {retry_in:.1f}s)" if retry_in is not None else "down"
        parts = [
            (down, down_text),
            (full, "full"),
            (tried, "already tried"),
            (other, "not in service"),
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

    def acquire(self, member: Member) -> None:
        member.active += 1
        if self._on_take is not None:
            self._on_take(member)

    def release(self, member: Member) -> None:
        # Never below 0: a double release must not make a member look emptier than it is.
        if member.active <= 0:
            return
        self._drop(member)
        if self.waiting and self._eligible(member, self.clock()):
            self._hand_over(member)

    def _drop(self, member: Member) -> None:
        member.active -= 1
        if self._on_drop is not None:
            self._on_drop(member)

    # -- the queue ----------------------------------------------------------------------

    def can_queue(self, avoid: Collection[Member] = ()) -> bool:
        """True when waiting makes sense: some member not yet tried is full but in service
        (a slot will free up), as opposed to every one being down."""
        now = self.clock()
        return any(
            m.active >= m.max_conns and (m.state == UP or (m.state == DOWN and now >= m.down_until))
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
        return waiter

    def dequeue(self, waiter: _Waiter) -> None:
        """The waiter is done (served, timed out or gone); removing twice is harmless."""
        try:
            self.waiting.remove(waiter)
        except ValueError:
            pass

    def _hand_over(self, member: Member) -> None:
        for waiter in list(self.waiting):
            if member in waiter.avoid:
                continue  # it already failed to connect there; the slot goes to the next one
            self.waiting.remove(waiter)
            self.acquire(member)
            member.picks += 1
            if waiter.deliver(member):
                return
            # The waiter gave up while its wake-up was on its way: undo and try the next.
            self._drop(member)

    def retry_after(self, avoid: Collection[Member] = ()) -> int:
        """Seconds for a 503's Retry-After: the next down member's trial, else the queue timeout."""
        now = self.clock()
        waits = [m.down_until - now for m in self.members
                 if m not in avoid and m.state == DOWN and m.down_until > now]
        if waits and not self.can_queue(avoid):
            return max(1, math.ceil(min(waits)))
        return max(1, math.ceil(self.config.queue.timeout))

    # -- passive health -----------------------------------------------------------------

    def connect_failed(self, member: Member) -> bool:
        """Count a failed connect. True when this failure marked the member down (log it)."""
        member.connect_failures += 1
        member.fail_streak += 1
        now = self.clock()
        if member.state == DOWN:
            # A failed trial: stay down for another down_time (no new transition to log).
            member.down_until = now + self.config.down_time
            return False
        threshold = self.config.fail_threshold
        if threshold > 0 and member.fail_streak >= threshold:
            member.state = DOWN
            member.down_until = now + self.config.down_time
            return True
        return False

    def connect_ok(self, member: Member) -> bool:
        """Count a successful connect. True when this success brought the member back up."""
        member.fail_streak = 0
        if member.state != DOWN:
            return False
        member.state = UP
        member.down_until = 0.0
        return True

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.config.balance} {len(self.members)} members>"


class _Waiter:
    __slots__ = ("deliver", "avoid")

    def __init__(self, deliver: Callable[[Member], bool], avoid: tuple[Member, ...]) -> None:
        self.deliver = deliver
        self.avoid = avoid


def _chain(hooks: Iterable[Callable[[Member], None] | None]) -> Callable[[Member], None] | None:
    """One callable for the hooks that exist (None when there are none, so it costs nothing)."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def call_all(member: Member) -> None:
        for hook in present:
            hook(member)

    return call_all
