"""random_two: two weighted draws of distinct candidates, the less loaded one wins."""

from __future__ import annotations

import random
from collections import Counter

from wsproxy.balancing import BALANCERS, Member, Pool, RandomTwoChoices
from wsproxy.config.schema import Address, MemberConfig, PoolConfig


def make_members(*weights: int) -> list[Member]:
    return [Member(MemberConfig(Address("10.0.0.1", 9001 + i), weight=w)) for i, w in enumerate(weights)]


def make_pool(weights=(1, 1, 1), seed=1, max_conns=10000) -> Pool:
    members = tuple(
        MemberConfig(Address("127.0.0.1", 9001 + i), weight=w, max_conns=max_conns)
        for i, w in enumerate(weights)
    )
    pool = Pool(PoolConfig(name="chat", balance="random_two", members=members))
    pool.balancer.rng = random.Random(seed)  # injectable, so every run draws the same
    return pool


def test_registered():
    assert BALANCERS["random_two"] is RandomTwoChoices


def test_single_candidate_is_returned_without_drawing():
    class NoDraws(random.Random):
        def random(self):
            raise AssertionError("no draw needed")

    (a,) = make_members(1)
    assert RandomTwoChoices([a], rng=NoDraws()).pick([a]) is a


def test_lower_load_of_the_two_wins():
    a, b = make_members(1, 1)
    balancer = RandomTwoChoices([a, b], rng=random.Random(3))
    a.active = 5
    # With two candidates both are always drawn, so the pick is deterministic.
    assert all(balancer.pick([a, b]) is b for _ in range(50))


def test_load_is_active_per_weight():
    # With two candidates both are always drawn, so only a tie depends on the draw.
    a, b = make_members(4, 1)
    balancer = RandomTwoChoices([a, b], rng=random.Random(3))
    a.active, b.active = 4, 0  # 4/4 = 1 > 0/1: b
    assert all(balancer.pick([a, b]) is b for _ in range(50))
    # An idle member beats any loaded one, whatever the weights: 2/4 > 0/1. (The old
    # "(active + 1) / weight" load said 3/4 < 1/1 and picked a here.)
    a.active = 2
    assert all(balancer.pick([a, b]) is b for _ in range(50))
    a.active, b.active = 3, 1  # 3/4 < 1/1: a
    assert all(balancer.pick([a, b]) is a for _ in range(50))
    a.active, b.active = 5, 1  # 5/4 > 1/1: b
    assert all(balancer.pick([a, b]) is b for _ in range(50))


def test_a_tie_goes_to_the_first_draw_so_ties_follow_weights():
    a, b = make_members(4, 1)
    balancer = RandomTwoChoices([a, b], rng=random.Random(3))
    a.active, b.active = 4, 1  # equal load 1: the first draw (a with 4/5) keeps it
    counts = Counter(balancer.pick([a, b]) for _ in range(10_000))
    assert abs(counts[a] / 10_000 - 0.8) <= 0.02


def test_idle_members_share_by_weight_not_heaviest_always():
    # Regression: with "(active + 1) / weight", two idle members are both drawn and the
    # heavier always won (3:1 gave 100 % / 0 %). Idle members tie; the first draw decides.
    pool = make_pool(weights=(3, 1))
    a, b = pool.members
    counts = Counter()
    for _ in range(10_000):
        member = pool.pick()
        pool.acquire(member)
        pool.release(member)
        counts[member] += 1
    assert abs(counts[a] / 10_000 - 0.75) <= 0.02
    assert abs(counts[b] / 10_000 - 0.25) <= 0.02


def test_the_two_draws_are_distinct():
    # If both draws could land on the loaded member, it would win about 1 pick in 9.
    a, b, c = make_members(1, 1, 1)
    a.active = 100
    balancer = RandomTwoChoices([a, b, c], rng=random.Random(5))
    assert a not in {balancer.pick([a, b, c]) for _ in range(2000)}


def test_draws_are_proportional_to_weight():
    members = make_members(5, 3, 2)
    balancer = RandomTwoChoices(members, rng=random.Random(11))
    first = Counter(balancer._draw(members, 10, skip=None) for _ in range(20_000))
    for member, weight in zip(members, (5, 3, 2)):
        assert abs(first[member] / 20_000 - weight / 10) <= 0.01
    # The second draw leaves the first out and renormalises the others: 3:2.
    second = Counter(balancer._draw(members, 5, skip=members[0]) for _ in range(20_000))
    assert members[0] not in second
    assert abs(second[members[1]] / 20_000 - 0.6) <= 0.01


def test_equal_idle_members_share_short_requests():
    # A tie goes to the first draw (random), not to the first-listed member.
    pool = make_pool(weights=(1, 1, 1))
    counts = Counter()
    for _ in range(9000):
        member = pool.pick()
        pool.acquire(member)
        pool.release(member)
        counts[member] += 1
    assert all(abs(n - 3000) <= 150 for n in counts.values())


def test_held_connections_follow_weights():
    pool = make_pool(weights=(3, 2, 1))
    for _ in range(600):
        pool.acquire(pool.pick())
    # Two random choices keep every member within a couple of connections of its share.
    for member, share in zip(pool.members, (300, 200, 100)):
        assert abs(member.active - share) <= 3


def test_weight_zero_only_as_last_resort():
    spare, main = make_members(0, 1)
    balancer = RandomTwoChoices([spare, main], rng=random.Random(1))
    main.active = 1000
    assert all(balancer.pick([spare, main]) is main for _ in range(20))
    assert balancer.pick([spare]) is spare
    other_spare = make_members(0, 0)[1]
    assert {balancer.pick([spare, other_spare]) for _ in range(50)} == {spare, other_spare}


def test_same_seed_same_picks():
    picks = []
    for _ in range(2):
        pool = make_pool(weights=(2, 1, 1, 1), seed=42)
        picks.append([pool.members.index(pool.pick()) for _ in range(200)])
    assert picks[0] == picks[1]


def test_default_generator_is_private_and_replayable():
    def run(reseed=None):
        pool = Pool(
            PoolConfig(
                name="chat",
                balance="random_two",
                members=tuple(MemberConfig(Address("127.0.0.1", 9001 + i)) for i in range(4)),
            )
        )
        if reseed is not None:
            pool.balancer.rng.seed(reseed)  # what each worker process does
        random.seed(12345)  # the global generator does not disturb it
        return [pool.members.index(pool.pick()) for _ in range(100)]

    assert run() == run()
    assert run(reseed=1) != run(reseed=2)
    assert RandomTwoChoices([]).rng is not RandomTwoChoices([]).rng


def test_full_members_are_skipped_through_the_pool():
    pool = make_pool(weights=(1, 1, 1), max_conns=2)
    for _ in range(6):
        pool.acquire(pool.pick())
    assert pool.pick() is None
    assert pool.why_unavailable() == "all 3 members are full"
