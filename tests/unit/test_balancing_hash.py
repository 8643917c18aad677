"""hash: Maglev consistent hashing, its fallback walk, and the Pool's key / hash_fallback."""

from __future__ import annotations

from collections import Counter

import pytest

from wsproxy.balancing import BALANCERS, MaglevHash, Member, Pool
from wsproxy.balancing.hashing import DEFAULT_TABLE_SIZE, build_table, hash64
from wsproxy.config import schema
from wsproxy.config.schema import Address, MemberConfig, PoolConfig
from wsproxy.errors import ConfigError

KEYS = [b"user-%d" % i for i in range(3000)]


def make_pool(weights=(1, 1, 1), max_conns=10000, ports=None, **options) -> Pool:
    ports = ports or [9001 + i for i in range(len(weights))]
    members = tuple(
        MemberConfig(Address("127.0.0.1", port), weight=w, max_conns=max_conns)
        for port, w in zip(ports, weights)
    )
    options.setdefault("balance", "hash")
    return Pool(PoolConfig(name="chat", members=members, **options), clock=lambda: 1000.0)


def owners(pool: Pool, keys=KEYS, **kwargs) -> list[int]:
    return [pool.pick(key=key, **kwargs).addr.port for key in keys]


# -- the hash and the table ----------------------------------------------------------------


def test_registered():
    assert BALANCERS["hash"] is MaglevHash
    assert MaglevHash.wants_key is True


def test_hash64_is_blake2b_64():
    # Pinned: changing the hash would remap every key on the next (rolling) restart.
    assert hash64(b"") == 0xE4A6A0577479B2B4
    assert hash64(b"user-42") == 0x6FA0CA4D7BE6EFA6


@pytest.mark.parametrize("weights", [(3, 2, 1), (1, 2, 3, 4), (4, 3, 2, 1), (7, 3), (5, 5, 5, 1)], ids=str)
def test_table_is_full_and_shared_by_weight(weights):
    names = ["%s:1" % name for name in "abcdefgh"[: len(weights)]]
    table = build_table(names, list(weights), DEFAULT_TABLE_SIZE)
    counts = Counter(table)
    assert sum(counts.values()) == DEFAULT_TABLE_SIZE and -1 not in counts
    for index, weight in enumerate(weights):
        # Within one turn of the exact share: the last round of turns stops part way.
        assert abs(counts[index] - DEFAULT_TABLE_SIZE * weight / sum(weights)) <= 2


def test_table_size_must_be_prime():
    with pytest.raises(ValueError, match="prime"):
        MaglevHash([], table_size=65536)
    assert MaglevHash([], table_size=251).table_size == 251


def test_pinned_picks():
    # Golden values: the same config maps these keys to these members in every process.
    pool = make_pool()
    assert owners(pool, [b"user-%d" % i for i in range(12)]) == [
        9001, 9003, 9002, 9002, 9002, 9003, 9003, 9001, 9003, 9001, 9003, 9001,
    ]


def test_same_key_same_member_and_member_order_does_not_matter():
    pool = make_pool(weights=(1, 2, 3))
    listed_backwards = make_pool(weights=(3, 2, 1), ports=[9003, 9002, 9001])
    assert owners(pool) == owners(pool) == owners(listed_backwards)


# -- members that may not take the connection: skipped at pick time ------------------------


def test_down_member_keys_move_to_others_and_come_back():
    clock = [0.0]
    pool = Pool(
        PoolConfig(
            name="chat",
            members=tuple(MemberConfig(Address("127.0.0.1", 9001 + i)) for i in range(4)),
            balance="hash",
            fail_threshold=1,
        ),
        clock=lambda: clock[0],
    )
    before = owners(pool)
    down = pool.members[1]
    pool.connect_failed(down)
    during = owners(pool)
    moved = [(b, d) for b, d in zip(before, during) if b != d]
    # Exactly the down member's keys moved, and they spread over all the others.
    assert all(b == 9002 for b, _ in moved) and 9002 not in during
    assert len(moved) == before.count(9002)
    assert set(Counter(d for _, d in moved)) == {9001, 9003, 9004}
    assert owners(pool) == during  # the fallback is stable too
    clock[0] = 100.0
    pool.connect_ok(down)
    assert owners(pool) == before  # back: every key returns, without a rebuild
    assert pool.balancer.rebuilds == 1


def test_full_member_is_skipped_for_its_keys_only():
    pool = make_pool(weights=(1, 1, 1), max_conns=1)
    a = pool.members[0]
    before = owners(pool)
    pool.acquire(a)
    during = owners(pool)
    assert all(d == b for b, d in zip(before, during) if b != 9001)
    assert 9001 not in during


def test_retry_after_failed_connect_is_a_stable_second_choice():
    pool = make_pool(weights=(1, 1, 1, 1))
    for key in KEYS[:200]:
        first = pool.pick(key=key)
        second = pool.pick(key=key, avoid=(first,))
        third = pool.pick(key=key, avoid=(first, second))
        assert len({first, second, third}) == 3
        assert pool.pick(key=key, avoid=(first,)) is second


def test_weight_change_rebuilds_and_restoring_it_restores_the_keys():
    pool = make_pool(weights=(1, 1, 1))
    before = owners(pool)
    pool.members[2].weight = 0  # an admin takes it out of the table
    without = owners(pool)
    assert 9003 not in without and pool.balancer.rebuilds == 2
    pool.members[2].weight = 1
    assert owners(pool) == before and pool.balancer.rebuilds == 3


def test_weight_zero_members_take_keys_only_when_nothing_else_is_left():
    pool = make_pool(weights=(1, 0, 0))
    main = pool.members[0]
    assert set(owners(pool)) == {9001}
    spares = owners(pool, avoid=(main,))
    assert set(spares) == {9002, 9003}
    assert owners(pool, avoid=(main,)) == spares  # still one member per key


def test_member_too_light_for_a_slot_still_serves_when_alone():
    # Shares below 1/M cannot be represented: weight 1 next to 1000 in a 13-slot table.
    heavy, light = (Member(MemberConfig(Address("10.0.0.1", p), weight=w)) for p, w in ((1, 1000), (2, 1)))
    balancer = MaglevHash([heavy, light], table_size=13)
    assert set(balancer._table) == {balancer._owners.index(heavy)}
    assert {balancer.pick([heavy, light], key) for key in KEYS[:100]} == {heavy}
    assert {balancer.pick([light], key) for key in KEYS[:100]} == {light}


# -- Pool.pick(key=...) and the fallback -------------------------------------------------------


def test_no_key_uses_hash_fallback_least_conn_by_default_and_counts_it():
    pool = make_pool(weights=(1, 1, 1))
    assert type(pool.fallback).__name__ == "WeightedLeastConn"
    held = [pool.pick() for _ in range(6)]
    for member in held:
        pool.acquire(member)  # least_conn spreads the keyless connections
    assert [m.active for m in pool.members] == [2, 2, 2]
    assert pool.hash_fallbacks == 6
    pool.pick(key=b"user-1")
    assert pool.hash_fallbacks == 6  # a pick with a key is not a fallback


def test_hash_fallback_is_configurable():
    pool = make_pool(weights=(1, 1), hash_fallback="round_robin")
    assert type(pool.fallback).__name__ == "SmoothWeightedRoundRobin"
    assert [pool.pick().addr.port for _ in range(4)] == [9001, 9002, 9001, 9002]


@pytest.mark.parametrize("fallback", ["hash", "no_such_thing"])
def test_hash_fallback_must_be_a_keyless_balancer(fallback):
    with pytest.raises(ConfigError) as info:
        make_pool(hash_fallback=fallback)
    assert info.value.path == "pools.chat.hash_fallback"
    assert "least_conn, random_two, round_robin" in info.value.message


def test_real_pool_config_defaults_to_least_conn():
    members = tuple(schema.MemberConfig(schema.Address("127.0.0.1", 9001 + i)) for i in range(2))
    pool = Pool(schema.PoolConfig(name="chat", balance="hash", members=members))
    assert type(pool.fallback).__name__ == "WeightedLeastConn"
    assert pool.pick(key=b"k") is pool.pick(key=b"k")


def test_other_balancers_ignore_the_key():
    members = tuple(schema.MemberConfig(schema.Address("127.0.0.1", 9001 + i)) for i in range(2))
    pool = Pool(schema.PoolConfig(name="chat", balance="round_robin", members=members))
    assert pool.fallback is None
    assert [pool.pick(key=b"same").addr.port for _ in range(4)] == [9001, 9002, 9001, 9002]
    assert pool.hash_fallbacks == 0


def test_fallback_hooks_are_called_too(monkeypatch):
    events = []

    class Hooked:
        def __init__(self, members):
            pass

        def pick(self, candidates):
            return candidates[0]

        def on_take(self, member):
            events.append(("take", member.addr.port))

        def on_drop(self, member):
            events.append(("drop", member.addr.port))

    monkeypatch.setitem(BALANCERS, "hooked", Hooked)
    pool = make_pool(weights=(1, 1), hash_fallback="hooked")
    member = pool.pick()
    pool.acquire(member)
    pool.release(member)
    assert events == [("take", 9001), ("drop", 9001)]

