"""Member lifecycle in the Pool: passive ejection with exponential backoff, handshake
failures, slow start, draining and active-check down, the operator's weight, and counts
shared through the NodeTable. A fake clock drives time; no sockets."""

from __future__ import annotations

from collections import Counter

import pytest

from wsproxy.balancing import Member, Pool
from wsproxy.balancing.pool import EJECTED_GAUGE, answer_failed
from wsproxy.config.schema import Address, MemberConfig, PoolConfig, QueueConfig
from wsproxy.node.table import (
    ADMIN,
    DRAINING,
    ENABLED,
    GAUGE,
    HEALTH,
    HEALTH_DOWN,
    HEALTH_UP,
    UP_SINCE_MS,
    WEIGHT,
    NodeTable,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pool(n=2, *, weights=None, max_conns=1000, balance="round_robin", clock=None, table=None,
              **options) -> Pool:
    weights = weights or (1,) * n
    members = tuple(MemberConfig(Address("127.0.0.1", 9001 + i), weight=w, max_conns=max_conns)
                    for i, w in enumerate(weights))
    config = PoolConfig(name="chat", balance=balance, members=members, **options)
    return Pool(config, table=table, clock=clock or Clock())


def picks(pool: Pool, count: int, **kwargs) -> Counter:
    got: Counter = Counter()
    for _ in range(count):
        member = pool.pick(**kwargs)
        got[member] += 1
        if member is not None:
            pool.acquire(member)
            pool.release(member)
    return got


def ejected_gauge(pool: Pool, member: Member) -> int:
    return pool.table.total(pool.table.counter_slot((EJECTED_GAUGE, pool.name, str(member.addr)), GAUGE))


# -- passive ejection and its backoff -------------------------------------------------------


def test_connect_failures_eject_for_down_time_and_raise_the_gauge():
    clock = Clock(0.0)
    pool = make_pool(clock=clock, fail_threshold=3, down_time=10.0)
    a, b = pool.members
    assert [pool.connect_failed(a) for _ in range(3)] == [False, False, True]
    assert (a.state, a.ejected, a.down_for, a.down_until, a.eject_cause) == ("down", True, 10.0, 10.0, "connect")
    assert ejected_gauge(pool, a) == 1 and ejected_gauge(pool, b) == 0
    assert set(picks(pool, 10)) == {b}
    assert pool.why_unavailable(avoid=(b,)) == "1 down (retry in 10.0s), 1 already tried"


def test_backoff_doubles_on_each_failed_trial_up_to_the_cap_and_a_success_resets_it():
    clock = Clock(0.0)
    pool = make_pool(1, clock=clock, fail_threshold=1, down_time=10.0, down_time_max=35.0)
    (a,) = pool.members
    assert pool.connect_failed(a) is True
    lengths = [a.down_for]
    for _ in range(4):
        clock.now = a.down_until
        assert pool.pick() is a  # the trial
        assert pool.connect_failed(a) is True  # failed: ejected again, logged again
        assert a.down_until == clock.now + a.down_for
        lengths.append(a.down_for)
    assert lengths == [10.0, 20.0, 35.0, 35.0, 35.0]
    assert a.ejections == 5
    assert ejected_gauge(pool, a) == 1  # one ejection in this process, however long

    clock.now = a.down_until
    assert pool.pick() is a
    assert pool.connect_ok(a) is True  # back: the caller logs "member back"
    assert (a.state, a.ejected, a.ejections, a.down_for, a.down_until) == ("up", False, 0, 0.0, 0.0)
    assert ejected_gauge(pool, a) == 0
    assert pool.connect_failed(a) is True
    assert a.down_for == 10.0  # the backoff started over


def test_one_trial_at_a_time_and_late_failures_change_nothing():
    clock = Clock(0.0)
    pool = make_pool(2, clock=clock, fail_threshold=2, down_time=5.0)
    a, b = pool.members
    pool.connect_failed(a)
    assert pool.connect_failed(a) is True
    # A connect begun before the ejection fails afterwards: counted, no new ejection.
    assert pool.connect_failed(a) is False
    assert (a.down_for, a.down_until, a.connect_failures) == (5.0, 5.0, 3)
    clock.now = 5.0
    assert pool.pick(avoid=(b,)) is a
    assert pool.pick(avoid=(b,)) is None  # the trial is out; nobody else gets a
    assert pool.why_unavailable(avoid=(b,)) == "1 down (retry in 5.0s), 1 already tried"


def test_fail_threshold_zero_never_ejects():
    pool = make_pool(1, fail_threshold=0)
    (a,) = pool.members
    assert not any(pool.connect_failed(a) or pool.handshake_failed(a) for _ in range(50))
    assert a.state == "up"


# -- handshake failures --------------------------------------------------------------------


def test_handshake_failures_eject_and_only_a_good_answer_brings_the_member_back():
    clock = Clock(0.0)
    pool = make_pool(2, clock=clock, fail_threshold=3, down_time=10.0)
    a, b = pool.members
    for _ in range(2):
        # Every attempt connects fine and then gets a 503: the connect success must not
        # reset the streak of bad answers.
        assert pool.connect_ok(a) is False
        assert pool.handshake_failed(a) is False
    pool.connect_ok(a)
    assert pool.handshake_failed(a) is True
    assert (a.state, a.eject_cause, a.handshake_streak, a.handshake_failures) == ("down", "handshake", 3, 3)

    clock.now = 10.0
    assert pool.pick(avoid=(b,)) is a  # trial
    assert pool.connect_ok(a) is False  # TCP works, but that was never the problem
    assert a.ejected
    assert pool.handshake_failed(a) is True  # the trial's answer is bad too: out for 20 s
    assert a.down_for == 20.0

    clock.now = 30.0
    assert pool.pick(avoid=(b,)) is a
    assert pool.connect_ok(a) is False
    assert pool.handshake_ok(a) is True  # a 101: back
    assert (a.state, a.handshake_streak, a.ejections) == ("up", 0, 0)


def test_good_answer_resets_the_handshake_streak():
    pool = make_pool(1, fail_threshold=2)
    (a,) = pool.members
    assert pool.handshake_failed(a) is False
    assert pool.handshake_ok(a) is False  # nothing to bring back
    assert pool.handshake_failed(a) is False
    assert pool.handshake_failed(a) is True


def test_connect_failures_and_bad_answers_count_separately():
    pool = make_pool(1, fail_threshold=2)
    (a,) = pool.members
    assert pool.connect_failed(a) is False
    assert pool.handshake_failed(a) is False
    assert a.state == "up"  # 1 + 1, not 2 of a kind
    assert pool.connect_failed(a) is True


def test_ejected_for_connects_comes_back_on_a_good_answer_too():
    clock = Clock(0.0)
    pool = make_pool(1, clock=clock, fail_threshold=1, down_time=1.0)
    (a,) = pool.members
    pool.connect_failed(a)
    clock.now = 1.0
    assert pool.pick() is a
    assert pool.handshake_ok(a) is True  # e.g. a parked connection answered
    assert a.state == "up"


@pytest.mark.parametrize("status, upgrade, failed", [
    (101, True, False),
    (200, True, True),  # the member does not speak WebSocket there
    (302, True, True),
    (500, True, True),
    (501, True, True),
    (503, True, True),
    (400, True, False),  # the client's doing: never lets a client eject members
    (401, True, False),
    (404, True, False),
    (426, True, False),
    (200, False, False),
    (304, False, False),
    (404, False, False),
    (500, False, True),
    (502, False, True),
    (503, False, True),
    (501, False, False),  # answers the request's method (HAProxy leaves it out too)
    (505, False, False),
])
def test_which_answers_count_against_a_member(status, upgrade, failed):
    assert answer_failed(status, upgrade) is failed


# -- slow start ------------------------------------------------------------------------------


def test_a_member_that_was_never_down_has_no_slow_start():
    pool = make_pool(1, weights=(10,), max_conns=100, slow_start=30.0)
    (a,) = pool.members
    assert (a.state, a.weight, a.max_conns) == ("up", 10, 100)


def test_slow_start_ramps_weight_and_max_conns_after_an_active_check_up():
    clock = Clock(1000.0)
    pool = make_pool(2, weights=(10, 10), max_conns=100, clock=clock, slow_start=10.0)
    a, b = pool.members
    pool.table.set_ctrl(a.col, UP_SINCE_MS, int(clock.now * 1000))  # HealthService: down -> up now
    seen = []
    for elapsed in (0.0, 0.5, 2.5, 5.0, 9.99, 10.0, 50.0):
        clock.now = 1000.0 + elapsed
        seen.append((elapsed, a.state, round(a.weight, 6), a.max_conns))
    assert seen == [
        (0.0, "slow_start", 0.625, 1),  # 1/16 of the weight and 1 connection from the first moment
        (0.5, "slow_start", 0.625, 5),
        (2.5, "slow_start", 2.5, 25),  # weight fractional (a weight-1 member ramps too), max_conns down
        (5.0, "slow_start", 5, 50),
        (9.99, "slow_start", 9.99, 99),
        (10.0, "up", 10, 100),
        (50.0, "up", 10, 100),
    ]
    assert (b.state, b.weight, b.max_conns) == ("up", 10, 100)


def test_slow_start_limits_the_rejoined_member_in_picks():
    clock = Clock(1000.0)
    pool = make_pool(2, max_conns=40, balance="least_conn", clock=clock, slow_start=20.0)
    a, b = pool.members
    b.active = 30  # b held on while a was down
    pool.table.set_ctrl(a.col, UP_SINCE_MS, int(clock.now * 1000))
    clock.now += 5.0  # a quarter in: a may hold 10
    held = []
    for _ in range(12):
        member = pool.pick()
        pool.acquire(member)
        held.append(member)
    # least_conn weighs a at a quarter: it takes picks while active/0.25 < 30, i.e. 8, then
    # shares with b (a's ramped max_conns, 10, is not reached).
    assert a.weight == 0.25
    assert Counter(held) == {a: 9, b: 3}
    while a.active < a.max_conns:  # a's ramped limit: 10 at a quarter of 40
        pool.acquire(a)
    assert a.max_conns == 10
    assert pool.why_unavailable(avoid=(b,)) == "1 full, 1 already tried"


def test_passive_recovery_starts_a_slow_start_in_this_process():
    clock = Clock(0.0)
    pool = make_pool(1, weights=(4,), max_conns=8, clock=clock, fail_threshold=1, down_time=1.0, slow_start=4.0)
    (a,) = pool.members
    pool.connect_failed(a)
    clock.now = 1.0
    pool.pick()
    assert pool.connect_ok(a) is True
    assert (a.state, a.weight, a.max_conns) == ("slow_start", 0.25, 1)
    clock.now = 3.0
    assert (a.state, a.weight, a.max_conns) == ("slow_start", 2, 4)
    clock.now = 5.0
    assert (a.state, a.weight, a.max_conns) == ("up", 4, 8)


def test_no_slow_start_without_the_option():
    clock = Clock(0.0)
    pool = make_pool(1, weights=(4,), clock=clock, fail_threshold=1, down_time=1.0)
    (a,) = pool.members
    pool.table.set_ctrl(a.col, UP_SINCE_MS, 1)
    pool.connect_failed(a)
    clock.now = 1.0
    pool.pick()
    pool.connect_ok(a)
    assert (a.state, a.weight) == ("up", 4)


def test_hash_table_ignores_the_ramp_so_it_is_not_rebuilt_on_every_step():
    clock = Clock(1000.0)
    pool = make_pool(3, weights=(5, 5, 5), balance="hash", clock=clock, slow_start=10.0)
    a = pool.members[0]
    before = pool.balancer.rebuilds
    pool.table.set_ctrl(a.col, UP_SINCE_MS, int(clock.now * 1000))
    for step in range(10):
        clock.now = 1000.0 + step
        assert a.table_weight == 5 and a.weight == pytest.approx(5 * max(step / 10, 1 / 16))
        pool.pick(key=b"user-%d" % step)
    assert pool.balancer.rebuilds == before
    pool.table.set_ctrl(a.col, WEIGHT, 2)  # the operator's weight does rebuild it
    pool.pick(key=b"x")
    assert pool.balancer.rebuilds == before + 1


# -- draining, active checks, the operator's weight -----------------------------------------


def test_draining_member_gets_nothing_not_even_its_sticky_clients():
    pool = make_pool(2, max_conns=1, queue=QueueConfig(size=10, timeout=1.0))
    a, b = pool.members
    pool.table.set_ctrl(a.col, ADMIN, DRAINING)
    assert a.state == "draining"
    assert set(picks(pool, 10, prefer=a)) == {b}
    assert pool.pick(avoid=(b,)) is None
    assert pool.why_unavailable(avoid=(b,)) == "1 draining, 1 already tried"
    pool.acquire(b)
    assert pool.why_unavailable() == "1 draining, 1 full"
    pool.table.set_ctrl(b.col, ADMIN, DRAINING)
    assert pool.why_unavailable() == "all 2 members are draining"
    assert not pool.can_queue()  # a draining member's slot is no use to a waiter
    pool.table.set_ctrl(a.col, ADMIN, ENABLED)
    assert pool.pick() is a


def test_member_down_by_active_checks_gets_no_trial():
    clock = Clock(0.0)
    pool = make_pool(2, clock=clock, fail_threshold=1, down_time=1.0)
    a, b = pool.members
    pool.table.set_ctrl(a.col, HEALTH, HEALTH_DOWN)
    assert a.state == "down"
    for now in (0.0, 5.0, 500.0):
        clock.now = now
        assert set(picks(pool, 5, prefer=a)) == {b}
    assert pool.why_unavailable(avoid=(b,)) == "1 down (health check), 1 already tried"
    pool.table.set_ctrl(b.col, HEALTH, HEALTH_DOWN)
    assert pool.why_unavailable() == "all 2 members are down (health check)"
    pool.table.set_ctrl(a.col, HEALTH, HEALTH_UP)
    assert pool.pick() is a


def test_queued_slot_of_an_ejected_member_is_its_trial():
    clock = Clock(0.0)
    pool = make_pool(1, max_conns=1, clock=clock, fail_threshold=1, down_time=2.0)
    (a,) = pool.members
    pool.acquire(a)  # a connection from before
    pool.connect_failed(a)
    got = []
    pool.enqueue(lambda m: got.append(m) or True)
    clock.now = 2.0
    pool.release(a)
    assert got == [a] and a.trial
    assert pool.pick() is None  # no second trial meanwhile
    assert pool.connect_failed(a) is True and a.down_for == 4.0


def test_operator_weight_overrides_the_config_and_minus_one_restores_it():
    pool = make_pool(2, weights=(1, 1))
    a, b = pool.members
    pool.table.set_ctrl(a.col, WEIGHT, 3)
    assert (a.weight, a.table_weight) == (3, 3)
    assert picks(pool, 40) == {a: 30, b: 10}
    pool.table.set_ctrl(a.col, WEIGHT, 0)
    assert a.weight == 0
    pool.table.set_ctrl(a.col, WEIGHT, -1)
    assert a.weight == 1
    assert picks(pool, 40) == {a: 20, b: 20}


def test_operator_weight_is_ramped_too():
    clock = Clock(100.0)
    pool = make_pool(1, weights=(1,), clock=clock, slow_start=10.0)
    (a,) = pool.members
    pool.table.set_ctrl(a.col, WEIGHT, 8)
    pool.table.set_ctrl(a.col, UP_SINCE_MS, int(clock.now * 1000))
    clock.now += 5.0
    assert a.weight == 4


# -- counts in the node table ---------------------------------------------------------------


def test_counts_are_node_wide_and_release_never_takes_another_process_connection():
    table = NodeTable(rows=4, members=8, counters=8)
    pool = make_pool(2, max_conns=2, table=table)
    a, b = pool.members
    first, second = table.claim_row(1001, 1), table.claim_row(1002, 1)
    table.row = first
    pool.acquire(a)
    table.row = second
    pool.acquire(a)
    assert (a.active, a.own_active) == (2, 1)
    assert pool.pick(prefer=a) is b  # full across the node, not per process
    pool.release(a)
    got = []
    pool.enqueue(lambda m: got.append(m) or True)
    pool.release(a)  # a double release in this process: its count is already 0...
    assert got == []  # ...so no slot was freed to hand over
    assert (a.active, table.own_conns(a.col, first)) == (1, 1)
    table.retire_row(first)  # that process died: its connection went with it
    assert a.active == 0


def test_two_pools_on_one_table_share_members_by_name():
    table = NodeTable(rows=2, members=8, counters=8)
    old, new = make_pool(2, table=table), make_pool(3, table=table)  # a reload adds a member
    assert [m.col for m in new.members[:2]] == [m.col for m in old.members]
    old.acquire(old.members[0])  # a connection of the old generation
    assert new.members[0].active == 1
    old.release(old.members[0])
    assert new.members[0].active == 0


def test_close_takes_ejections_out_of_the_gauge():
    table = NodeTable(rows=2, members=8, counters=8)
    pool = make_pool(2, table=table, fail_threshold=1)
    a, b = pool.members
    pool.connect_failed(a)
    pool.connect_failed(b)
    assert ejected_gauge(pool, a) == ejected_gauge(pool, b) == 1
    pool.close()
    assert ejected_gauge(pool, a) == ejected_gauge(pool, b) == 0
    pool.connect_ok(a)  # a late success on the replaced pool: the gauge stays right
    assert ejected_gauge(pool, a) == 0


def test_standalone_member_has_its_own_cells():
    m = Member(MemberConfig(Address("10.0.0.1", 80), weight=2, max_conns=5))
    m.active = 3
    assert (m.active, m.weight, m.max_conns, m.state, m.full) == (3, 2, 5, "up", False)
    m.active = 5
    assert m.full
