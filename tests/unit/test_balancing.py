"""Pools and balancers: distribution, interleaving, limits, avoid list, passive health."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from wsproxy.balancing import BALANCERS, Member, Pool, SmoothWeightedRoundRobin, WeightedLeastConn
from wsproxy.config.schema import QueueConfig
from wsproxy.errors import ConfigError

# -- stand-ins for wsproxy.config.schema (fields as in docs/INTERFACES.md) --------------------


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MemberConfig:
    addr: Address
    weight: int = 1
    max_conns: int = 10000


@dataclass(frozen=True)
class PoolConfig:
    name: str
    members: tuple
    balance: str = "round_robin"
    fail_threshold: int = 3
    down_time: float = 10.0
    hash_fallback: str = "least_conn"
    persist: object = None
    queue: object = QueueConfig()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pool(weights=(1, 1), balance="round_robin", max_conns=10000, clock=None, **pool_options) -> Pool:
    members = tuple(
        MemberConfig(Address("127.0.0.1", 9001 + i), weight=w, max_conns=max_conns) for i, w in enumerate(weights)
    )
    config = PoolConfig(name="chat", members=members, balance=balance, **pool_options)
    return Pool(config, clock=clock or FakeClock())


def port_of(member: Member) -> int:
    return member.addr.port


def pick_held(pool: Pool, n: int, **kwargs) -> list[Member]:
    """n picks whose connections stay open."""
    picked = []
    for _ in range(n):
        member = pool.pick(**kwargs)
        assert member is not None
        pool.acquire(member)
        picked.append(member)
    return picked


def pick_released(pool: Pool, n: int) -> list[Member]:
    """n short requests: each connection is closed before the next pick."""
    picked = []
    for _ in range(n):
        member = pool.pick()
        assert member is not None
        pool.acquire(member)
        pool.release(member)
        picked.append(member)
    return picked


# -- smooth weighted round robin -----------------------------------------------------------


def test_smooth_wrr_sequence_interleaves():
    pool = make_pool(weights=(5, 1, 1))
    names = {9001: "a", 9002: "b", 9003: "c"}
    sequence = "".join(names[port_of(m)] for m in pick_released(pool, 14))
    assert sequence == "aabacaa" * 2  # nginx's order, not "aaaaabc"


def test_smooth_wrr_distribution_is_exact():
    pool = make_pool(weights=(5, 3, 2))
    counts = Counter(port_of(m) for m in pick_released(pool, 10_000))
    assert counts == {9001: 5000, 9002: 3000, 9003: 2000}


def test_smooth_wrr_every_cycle_is_exact():
    pool = make_pool(weights=(4, 2, 1))
    picks = [port_of(m) for m in pick_released(pool, 7 * 50)]
    for start in range(0, len(picks), 7):
        assert Counter(picks[start : start + 7]) == {9001: 4, 9002: 2, 9003: 1}


def test_round_robin_held_connections_within_two_percent():
    pool = make_pool(weights=(3, 2, 1))
    counts = Counter(port_of(m) for m in pick_held(pool, 10_000))
    for port, weight in ((9001, 3), (9002, 2), (9003, 1)):
        assert abs(counts[port] / 10_000 - weight / 6) <= 0.02


def test_smooth_wrr_with_varying_candidates():
    balancer = SmoothWeightedRoundRobin([])
    a, b, c = (Member(MemberConfig(Address("10.0.0.1", p), weight=1)) for p in (1, 2, 3))
    # Two picks leave c with the largest unused credit, then c sits out (full or down)
    # for a while: a and b strictly alternate meanwhile.
    assert [balancer.pick([a, b, c]) for _ in range(2)] == [a, b]
    stretch = [balancer.pick([a, b]) for _ in range(1000)]
    assert Counter(stretch) == {a: 500, b: 500}
    assert all(x is not y for x, y in zip(stretch, stretch[1:]))
    # c rejoins without a burst and the shares are exact again.
    after = [balancer.pick([a, b, c]) for _ in range(30)]
    assert Counter(after) == {a: 10, b: 10, c: 10}
    assert max(len(run) for run in _runs(after)) <= 2


def test_smooth_wrr_skips_full_member_and_stays_proportional():
    pool = make_pool(weights=(2, 1, 1), max_conns=10000)
    a, b, c = pool.members
    counts = Counter()
    for step in range(12_000):
        # c is full during every other stretch of 100 picks.
        c.max_conns = 0 if (step // 100) % 2 else 10000
        member = pool.pick()
        counts[member] += 1
    # While c is in, shares are 2:1:1; while out, 2:1. Expected: a 6000*(1/2 + 2/3), ...
    assert abs(counts[a] - 6000 * (2 / 4 + 2 / 3)) <= 20
    assert abs(counts[b] - 6000 * (1 / 4 + 1 / 3)) <= 20
    assert abs(counts[c] - 6000 * (1 / 4)) <= 20


def _runs(items):
    run = [items[0]]
    for item in items[1:]:
        if item is run[-1]:
            run.append(item)
        else:
            yield run
            run = [item]
    yield run


# -- weighted least connections ----------------------------------------------------------


def test_least_conn_equal_members_alternate_with_short_requests():
    pool = make_pool(weights=(1, 1, 1), balance="least_conn")
    sequence = [port_of(m) for m in pick_released(pool, 9)]
    assert sequence == [9001, 9002, 9003] * 3


def test_least_conn_short_requests_follow_weights_like_round_robin():
    # Regression: with the old load "(active + 1) / weight" every idle member was compared
    # at 1/weight and the heaviest won every short request (3:1 gave 10000 / 0). Now idle
    # members tie at 0 and smooth WRR breaks the tie, as nginx does: the same order as
    # round_robin, and exact shares.
    names = {9001: "a", 9002: "b", 9003: "c"}
    for weights, order in (((3, 1), "aaba"), ((5, 1, 1), "aabacaa")):
        pool = make_pool(weights=weights, balance="least_conn")
        rr = make_pool(weights=weights, balance="round_robin")
        sequence = "".join(names[port_of(m)] for m in pick_released(pool, 2 * len(order)))
        assert sequence == order * 2
        assert sequence == "".join(names[port_of(m)] for m in pick_released(rr, 2 * len(order)))
    pool = make_pool(weights=(3, 2, 1), balance="least_conn")
    counts = Counter(port_of(m) for m in pick_released(pool, 6000))
    assert counts == {9001: 3000, 9002: 2000, 9003: 1000}


def test_least_conn_held_connections_follow_weights():
    pool = make_pool(weights=(3, 1), balance="least_conn")
    first = [port_of(m) for m in pick_held(pool, 4)]
    # The first goes to a (a round robin among the idle), the second to the idle b (0/1 <
    # 1/3), then a until its load catches up with b's: weights honoured after 4 connections.
    assert first == [9001, 9002, 9001, 9001]
    pick_held(pool, 396)
    assert [m.active for m in pool.members] == [300, 100]


def test_least_conn_idle_light_member_comes_second_then_the_weights_even_out():
    # The price of comparing active / weight (nginx) rather than (active + 1) / weight:
    # an idle weight-1 member beats a weight-10 member holding one connection.
    pool = make_pool(weights=(10, 1), balance="least_conn")
    first = [port_of(m) for m in pick_held(pool, 11)]
    assert first[:2] == [9001, 9002]
    assert Counter(first) == {9001: 10, 9002: 1}
    pick_held(pool, 1089)
    assert [m.active for m in pool.members] == [1000, 100]


def test_least_conn_loads_compared_exactly_per_weight():
    balancer = WeightedLeastConn([])
    a, b = (Member(MemberConfig(Address("10.0.0.1", p), weight=w)) for p, w in ((1, 3), (2, 1)))
    a.active, b.active = 2, 1  # 2/3 < 1/1
    assert balancer.pick([a, b]) is a
    a.active = 4  # 4/3 > 1/1
    assert balancer.pick([a, b]) is b
    # Integers cross-multiplied: 10**17+1 and 10**17 connections per weight 3 differ,
    # which float division (3.3333333333333336e16 both) would not see.
    a.active, b.active = 3 * 10**17 + 1, 10**17
    assert balancer.pick([a, b]) is b
    a.active = 3 * 10**17 - 1
    assert balancer.pick([a, b]) is a


def test_least_conn_tie_among_loaded_members_is_a_weighted_round_robin():
    balancer = WeightedLeastConn([])
    a, b, c = (Member(MemberConfig(Address("10.0.0.1", p), weight=w)) for p, w in ((1, 2), (2, 1), (3, 1)))
    a.active, b.active, c.active = 4, 2, 3  # a and b at 2 per weight unit, c at 3
    picks = [balancer.pick([a, b, c]) for _ in range(300)]  # released at once: loads stay
    assert Counter(picks) == {a: 200, b: 100}
    assert all(picks[i : i + 3].count(a) == 2 for i in range(0, 300, 3))


def test_least_conn_distribution_with_releases():
    rng = random.Random(7)
    pool = make_pool(weights=(3, 2, 1), balance="least_conn")
    open_conns: list[tuple[int, Member]] = []  # (ends at step, member)
    counts = Counter()
    for step in range(10_000):
        still_open = []
        for ends, member in open_conns:
            if ends <= step:
                pool.release(member)
            else:
                still_open.append((ends, member))
        open_conns = still_open
        member = pool.pick()
        pool.acquire(member)
        open_conns.append((step + rng.randint(1, 60), member))
        counts[member] += 1
    for member, weight in zip(pool.members, (3, 2, 1)):
        assert abs(counts[member] / 10_000 - weight / 6) <= 0.03
        # live load stays proportional too (within a few connections)
    loads = [m.active / m.weight for m in pool.members]
    assert max(loads) - min(loads) <= 2


def test_least_conn_steers_away_from_member_with_long_lived_connections():
    pool = make_pool(weights=(1, 1, 1), balance="least_conn")
    a, b, c = pool.members
    for _ in range(50):
        pool.acquire(a)  # 50 WebSockets that stay open on a
    short = pick_released(pool, 100)
    assert a not in short
    assert Counter(short) == {b: 50, c: 50}
    # New long-lived sessions fill b and c up to a's level before a gets any.
    held = pick_held(pool, 100)
    assert Counter(held) == {b: 50, c: 50}
    assert pool.pick() in (a, b, c)


def test_least_conn_weight_zero_only_as_last_resort():
    balancer = WeightedLeastConn([])
    spare = Member(MemberConfig(Address("10.0.0.1", 1), weight=0))
    main = Member(MemberConfig(Address("10.0.0.1", 2), weight=1))
    main.active = 1000
    assert balancer.pick([spare, main]) is main
    assert balancer.pick([spare]) is spare
    # Only spares left: the least loaded of them, and idle ones take turns.
    other = Member(MemberConfig(Address("10.0.0.1", 3), weight=0))
    spare.active = 2
    assert all(balancer.pick([spare, other]) is other for _ in range(5))
    spare.active = 0
    assert Counter(balancer.pick([spare, other]) for _ in range(10)) == {spare: 5, other: 5}


# -- max_conns, avoid list, why_unavailable ----------------------------------------------


def test_max_conns_respected_then_none_when_all_full():
    pool = make_pool(weights=(1, 1), max_conns=2)
    held = pick_held(pool, 4)
    assert Counter(port_of(m) for m in held) == {9001: 2, 9002: 2}
    assert pool.pick() is None
    assert pool.why_unavailable() == "all 2 members are full"
    pool.release(held[0])
    assert pool.pick() is held[0]


def test_full_member_is_skipped_not_waited_for():
    pool = make_pool(weights=(5, 1), max_conns=1, balance="round_robin")
    a, b = pool.members
    pool.acquire(a)
    assert pool.pick() is b
    assert pool.why_unavailable() == "1 of 2 available, 1 full"


def test_only_member_wording():
    pool = make_pool(weights=(1,), max_conns=1)
    pick_held(pool, 1)
    assert pool.pick() is None
    assert pool.why_unavailable() == "the only member is full"


def test_avoid_list():
    pool = make_pool(weights=(1, 1, 1))
    a, b, c = pool.members
    for _ in range(20):
        assert pool.pick(avoid=(a,)) in (b, c)
    assert pool.pick(avoid=[a, b]) is c
    assert pool.pick(avoid={a, b, c}) is None
    assert pool.why_unavailable(avoid=(a, b, c)) == "all 3 members are already tried"


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_avoid_and_full_together(balance):
    pool = make_pool(weights=(1, 1, 1), max_conns=1, balance=balance)
    a, b, c = pool.members
    pool.acquire(b)
    assert pool.pick(avoid=(a,)) is c
    pool.acquire(c)
    assert pool.pick(avoid=(a,)) is None
    assert pool.why_unavailable(avoid=(a,)) == "2 full, 1 already tried"


def test_release_never_goes_below_zero():
    pool = make_pool()
    a = pool.members[0]
    pool.release(a)
    assert a.active == 0
    pool.acquire(a)
    pool.release(a)
    pool.release(a)
    assert a.active == 0


def test_counters_for_logs():
    pool = make_pool(weights=(1, 1))
    a, b = pool.members
    pick_released(pool, 10)
    assert (a.picks, b.picks) == (5, 5)
    pool.connect_failed(a)
    pool.connect_ok(a)
    pool.connect_failed(a)
    assert a.connect_failures == 2
    assert a.fail_streak == 1


# -- passive health: failure streak, down time, trial, recovery -----------------------------


def test_failure_streak_marks_down_and_down_member_is_skipped():
    clock = FakeClock(1000.0)
    pool = make_pool(weights=(1, 1), clock=clock, fail_threshold=3, down_time=10.0)
    a, b = pool.members
    assert pool.connect_failed(a) is False
    assert pool.connect_failed(a) is False
    assert a.state == "up"
    assert pool.connect_failed(a) is True  # the third failure marks it down
    assert (a.state, a.down_until, a.fail_streak) == ("down", 1010.0, 3)
    assert all(m is b for m in pick_released(pool, 20))

    clock.now = 1005.8
    pool.acquire(b)
    b.max_conns = 1
    assert pool.pick() is None
    assert pool.why_unavailable() == "1 down (retry in 4.2s), 1 full"
    pool.release(b)
    b.max_conns = 10000


def test_all_down_wording():
    clock = FakeClock(0.0)
    pool = make_pool(weights=(1, 1), clock=clock, fail_threshold=1, down_time=10.0)
    for member in pool.members:
        assert pool.connect_failed(member) is True
    clock.now = 7.5
    assert pool.pick() is None
    assert pool.why_unavailable() == "all 2 members are down (retry in 2.5s)"


def test_down_member_gets_one_trial_after_down_time_then_recovers():
    clock = FakeClock(0.0)
    pool = make_pool(weights=(1, 1), clock=clock, fail_threshold=2, down_time=10.0)
    a, b = pool.members
    pool.connect_failed(a)
    pool.connect_failed(a)
    assert a.state == "down"

    clock.now = 9.99
    assert pool.pick(avoid=(b,)) is None
    clock.now = 10.0
    assert pool.pick(avoid=(b,)) is a  # eligible again for a trial
    assert a.state == "down"  # ...but not up until a connect succeeds
    assert pool.pick(avoid=(b,)) is None  # one trial at a time

    # The trial fails: ejected again, for twice as long (exponential backoff), and the
    # caller logs the new ejection.
    assert pool.connect_failed(a) is True
    assert (a.state, a.down_until, a.down_for) == ("down", 30.0, 20.0)
    clock.now = 29.9
    assert pool.pick(avoid=(b,)) is None

    clock.now = 30.0
    assert pool.pick(avoid=(b,)) is a
    assert pool.connect_ok(a) is True  # back up: the caller logs it
    assert (a.state, a.fail_streak, a.down_until) == ("up", 0, 0.0)
    assert pool.connect_ok(a) is False
    assert Counter(pick_released(pool, 10)) == {a: 5, b: 5}


def test_abandoned_trial_is_retried_after_down_time():
    clock = FakeClock(0.0)
    pool = make_pool(weights=(1,), clock=clock, fail_threshold=1, down_time=5.0)
    (a,) = pool.members
    pool.connect_failed(a)
    clock.now = 5.0
    assert pool.pick() is a  # trial picked, then the client went away before connecting
    assert pool.pick() is None
    assert pool.why_unavailable() == "the only member is down (retry in 5.0s)"
    clock.now = 10.0
    assert pool.pick() is a


def test_success_resets_the_streak():
    pool = make_pool(fail_threshold=3)
    a = pool.members[0]
    pool.connect_failed(a)
    pool.connect_failed(a)
    pool.connect_ok(a)
    assert pool.connect_failed(a) is False
    assert pool.connect_failed(a) is False
    assert a.state == "up"
    assert pool.connect_failed(a) is True


def test_fail_threshold_zero_disables_marking_down():
    pool = make_pool(fail_threshold=0)
    a = pool.members[0]
    for _ in range(100):
        assert pool.connect_failed(a) is False
    assert a.state == "up"


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_down_member_skipped_by_every_balancer(balance):
    clock = FakeClock(0.0)
    pool = make_pool(weights=(1, 1, 1), balance=balance, clock=clock, fail_threshold=1)
    a, b, c = pool.members
    pool.connect_failed(b)
    assert b not in pick_released(pool, 30)
    clock.now = 10.0
    assert b in pick_released(pool, 3)


# -- balancer vtable ---------------------------------------------------------------------------


def test_balancers_registry_and_unknown_balance():
    assert BALANCERS["round_robin"] is SmoothWeightedRoundRobin
    assert BALANCERS["least_conn"] is WeightedLeastConn
    with pytest.raises(ConfigError) as info:
        make_pool(balance="no_such_thing")
    assert info.value.path == "pools.chat.balance"
    assert "hash, least_conn, random_two, round_robin" in info.value.message


def test_optional_on_take_on_drop_hooks(monkeypatch):
    events = []

    class Recording:
        def __init__(self, members):
            self.members = members

        def pick(self, candidates):
            return candidates[-1]

        def on_take(self, member):
            events.append(("take", port_of(member), member.active))

        def on_drop(self, member):
            events.append(("drop", port_of(member), member.active))

    monkeypatch.setitem(BALANCERS, "recording", Recording)
    pool = make_pool(weights=(1, 1), balance="recording")
    assert len(pool.balancer.members) == 2
    member = pool.pick()
    pool.acquire(member)
    pool.release(member)
    pool.release(member)  # already 0: no second drop
    assert events == [("take", 9002, 1), ("drop", 9002, 0)]


def test_balancer_without_hooks_is_fine(monkeypatch):
    class Minimal:
        def __init__(self, members):
            pass

        def pick(self, candidates):
            return candidates[0]

    monkeypatch.setitem(BALANCERS, "minimal", Minimal)
    pool = make_pool(balance="minimal")
    member = pool.pick()
    pool.acquire(member)
    pool.release(member)
    assert member.active == 0


@pytest.mark.parametrize("balance", sorted(BALANCERS))
def test_with_real_pool_config(balance):
    schema = pytest.importorskip("wsproxy.config.schema")
    members = tuple(
        schema.MemberConfig(addr=schema.Address("127.0.0.1", 9001 + i), weight=w, max_conns=2)
        for i, w in enumerate((2, 1))
    )
    pool = Pool(schema.PoolConfig(name="chat", balance=balance, members=members), clock=FakeClock())
    held = pick_held(pool, 4)
    assert Counter(str(m.addr) for m in held) == {"127.0.0.1:9001": 2, "127.0.0.1:9002": 2}
    assert pool.pick() is None
    assert pool.why_unavailable() == "all 2 members are full"
