"""Pool: sticky preference, the FIFO slot queue, Retry-After; sticky cookie values; the
cookie helpers and hash keys. All sans-I/O: no sockets, no event loop."""

from __future__ import annotations

import pytest

from wsproxy.balancing import Pool
from wsproxy.balancing.keys import request_key
from wsproxy.balancing.sticky import StickyCookie
from wsproxy.config.schema import Address, MemberConfig, PersistConfig, PoolConfig, QueueConfig
from wsproxy.protocol.cookies import cookie_value, set_cookie, without_cookie
from wsproxy.protocol.http1 import RequestHead


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(n=2, max_conns=1, queue=QueueConfig(size=10, timeout=5.0), **options) -> Pool:
    members = tuple(MemberConfig(Address("127.0.0.1", 9001 + i), max_conns=max_conns) for i in range(n))
    return Pool(PoolConfig(name="p", members=members, queue=queue, **options), clock=Clock())


# --------------------------------------------------------------------------- prefer


def test_prefer_wins_when_it_may_take_the_connection():
    pool = make_pool(3, max_conns=10)
    target = pool.members[2]
    assert all(pool.pick(prefer=target) is target for _ in range(10))


@pytest.mark.parametrize("why", ["down", "full", "avoided"])
def test_prefer_is_ignored_when_down_full_or_tried(why):
    pool = make_pool(2, max_conns=1, fail_threshold=1)
    target, other = pool.members
    avoid = ()
    if why == "down":
        pool.connect_failed(target)
    elif why == "full":
        pool.acquire(target)
    else:
        avoid = (target,)
    assert pool.pick(avoid, prefer=target) is other


# --------------------------------------------------------------------------- the queue


def full_pool(n=1) -> Pool:
    pool = make_pool(n)
    for m in pool.members:
        pool.acquire(m)
    return pool


def test_can_queue_only_when_a_member_is_full_not_when_all_are_down():
    pool = make_pool(2, fail_threshold=1)
    assert not pool.can_queue()  # free slots: no need
    pool.acquire(pool.members[0])
    pool.acquire(pool.members[1])
    assert pool.can_queue()
    assert not pool.can_queue(avoid=pool.members)  # tried them all already
    down = make_pool(1, fail_threshold=1)
    down.connect_failed(down.members[0])
    assert not down.can_queue()  # waiting would not help: answer 503 now


def test_release_hands_the_slot_to_waiters_in_fifo_order():
    pool = full_pool()
    member = pool.members[0]
    got: list[tuple[str, object]] = []
    for name in "abc":
        pool.enqueue(lambda m, name=name: got.append((name, m)) or True)
    assert member.active == 1
    pool.release(member)
    assert got == [("a", member)] and member.active == 1  # handed over, still counted
    pool.release(member)
    pool.release(member)
    assert [name for name, _ in got] == ["a", "b", "c"]
    assert member.active == 1 and not pool.waiting
    pool.release(member)
    assert member.active == 0


def test_a_waiter_that_gave_up_passes_the_slot_on():
    pool = full_pool()
    member = pool.members[0]
    got = []
    pool.enqueue(lambda m: False)  # gave up while its wake-up was on its way
    pool.enqueue(lambda m: got.append(m) or True)
    pool.release(member)
    assert got == [member] and member.active == 1


def test_a_waiter_that_is_dequeued_gets_nothing_and_leaks_nothing():
    pool = full_pool()
    member = pool.members[0]
    waiter = pool.enqueue(lambda m: pytest.fail("dequeued waiter called"))
    pool.dequeue(waiter)
    pool.dequeue(waiter)  # twice is harmless
    pool.release(member)
    assert member.active == 0


def test_a_waiter_is_not_handed_a_member_it_already_failed_on():
    pool = full_pool(2)
    a, b = pool.members
    got = []
    pool.enqueue(lambda m: got.append(("first", m)) or True, avoid=(a,))
    pool.enqueue(lambda m: got.append(("second", m)) or True)
    pool.release(a)
    assert got == [("second", a)]  # the first waiter may not use a; it keeps its place
    pool.release(b)
    assert got[-1] == ("first", b)


def test_queue_full_and_counters():
    pool = make_pool(1, queue=QueueConfig(size=2, timeout=1.0))
    assert not pool.queue_full
    pool.enqueue(lambda m: True)
    pool.enqueue(lambda m: True)
    assert pool.queue_full and pool.queued_total == 2


def test_retry_after_is_the_queue_timeout_or_the_next_trial():
    pool = make_pool(1, queue=QueueConfig(size=5, timeout=2.5), fail_threshold=1, down_time=7.2)
    pool.acquire(pool.members[0])
    assert pool.retry_after() == 3  # full: a slot may free within the queue timeout
    pool.release(pool.members[0])
    pool.connect_failed(pool.members[0])
    assert pool.retry_after() == 8  # down: its next trial


# --------------------------------------------------------------------------- sticky cookie


def sticky_for(secret, addrs=("10.0.0.1:80", "10.0.0.2:80"), pool="p"):
    members = tuple(MemberConfig(Address(a.split(":")[0], int(a.split(":")[1]))) for a in addrs)
    p = Pool(PoolConfig(name=pool, members=members, persist=PersistConfig("SRV", secret)))
    return p.sticky, p.members


def test_sticky_values_are_opaque_distinct_and_round_trip():
    sticky, members = sticky_for("s" * 20)
    values = [sticky.value_for(m) for m in members]
    assert len(set(values)) == 2
    for value, member in zip(values, members):
        assert "10.0.0" not in value and "80" not in value
        assert sticky.member_for(value) is member
    for forged in (None, "", "x", values[0] + "A", values[0].lower()):
        assert sticky.member_for(forged) is None


def test_sticky_values_are_stable_with_a_secret_and_random_without():
    a, _ = sticky_for("s" * 20)
    b, _ = sticky_for("s" * 20, addrs=("10.0.0.2:80", "10.0.0.1:80"))  # order does not matter
    assert {a.value_for(m) for m in a._value} == {b.value_for(m) for m in b._value}
    assert not a.generated_secret
    other, members = sticky_for("t" * 20)
    assert other.member_for(next(iter(a._member))) is None
    r1, m1 = sticky_for(None)
    r2, m2 = sticky_for(None)
    assert r1.generated_secret and r1.value_for(m1[0]) != r2.value_for(m2[0])
    another_pool, pm = sticky_for("s" * 20, pool="q")
    assert another_pool.value_for(pm[0]) not in a._member  # per pool


def test_sticky_header_attributes():
    sticky, members = sticky_for("s" * 20)
    name, value = sticky.header(members[0], secure=True)
    assert name == "Set-Cookie"
    assert value == f"SRV={sticky.value_for(members[0])}; Path=/; HttpOnly; SameSite=Lax; Secure"
    assert set_cookie("A", "b", secure=False, max_age=86400.0)[1] == "A=b; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400"


# --------------------------------------------------------------------------- cookies, keys


def test_cookie_value_and_without_cookie():
    headers = [("Host", "x"), ("Cookie", "a=1; SRV=abc; b=2"), ("cookie", "SRV=later")]
    assert cookie_value(headers, "SRV") == "abc"  # the first one counts
    assert cookie_value(headers, "b") == "2"
    assert cookie_value(headers, "nope") is None
    assert cookie_value([("Cookie", 'q="quoted"')], "q") == "quoted"
    assert without_cookie(headers, "SRV") == [("Host", "x"), ("Cookie", "a=1; b=2")]
    assert without_cookie([("Cookie", "SRV=1")], "SRV") == []
    assert without_cookie([("Cookie", "SRVX=1")], "SRV") == [("Cookie", "SRVX=1")]


def head(target="/", headers=()):
    return RequestHead("GET", target, "1.1", list(headers))


@pytest.mark.parametrize("hash_key, request_head, expected", [
    ("source_ip", None, b"192.0.2.1"),
    ("path", head("/room/7?x=1"), b"/room/7"),
    ("header:X-User", head(headers=[("x-user", "alice")]), b"alice"),
    ("header:X-User", head(), None),
    ("header:X-User", head(headers=[("X-User", "")]), None),
    ("cookie:sid", head(headers=[("Cookie", "a=1; sid=s1")]), b"s1"),
    ("cookie:sid", head(headers=[("Cookie", "a=1")]), None),
    ("query:room", head("/?a=1&room=42&room=43"), b"42"),
    ("query:room", head("/?roomy=1"), None),
    ("query:room", head("/?room="), None),
    ("query:room", head("/"), None),
])
def test_request_key(hash_key, request_head, expected):
    assert request_key(hash_key, client_ip="192.0.2.1", head=request_head) == expected


def test_request_key_for_tcp_is_only_the_source_address():
    assert request_key("source_ip", client_ip="192.0.2.1") == b"192.0.2.1"
    assert request_key("header:X", client_ip="192.0.2.1") is None
    assert request_key(None, client_ip="192.0.2.1") is None
