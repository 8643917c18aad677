"""wsproxy.proxy.limits: connection counts per listener and per client, token buckets for
handshakes (with a clock the tests move), bounded tables, and the client keys."""

from __future__ import annotations

import logging

import pytest

from wsproxy.config.schema import Address, ListenerConfig, RateConfig
from wsproxy.protocol.forwarding import TrustedProxies
from wsproxy.proxy.limits import (IP_CONNS, LOG_INTERVAL, MAX_CONNS, ListenerLimits, client_key, forwarded_client,
                                  refused_connection, retry_after)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits(**kw) -> tuple[ListenerLimits, Clock]:
    clock = Clock()
    return ListenerLimits(clock=clock, **kw), clock


# --- connections -----------------------------------------------------------------------------------

def test_max_conns_refuses_the_next_and_a_freed_slot_takes_one_again():
    lim, _ = limits(max_conns=3)
    assert [lim.open(f"10.0.0.{i}") for i in range(3)] == [None, None, None]
    assert lim.open("10.0.0.9") == MAX_CONNS
    assert lim.conns == 3 and "10.0.0.9" not in lim.per_ip  # a refusal counts nothing
    lim.close("10.0.0.1")
    assert lim.open("10.0.0.9") is None
    assert lim.conns == 3


def test_max_conns_counts_connections_without_a_client_key():
    lim, _ = limits(max_conns=2, max_conns_per_ip=1)
    assert lim.open(None) is None and lim.open(None) is None  # trusted balancers: not per IP
    assert lim.open("10.0.0.1") == MAX_CONNS
    assert lim.per_ip == {}


def test_max_conns_per_ip_is_per_client():
    lim, _ = limits(max_conns=100, max_conns_per_ip=2)
    assert lim.open("10.0.0.1") is None and lim.open("10.0.0.1") is None
    assert lim.open("10.0.0.1") == IP_CONNS
    assert lim.open("10.0.0.2") is None  # someone else is served
    assert lim.conns == 3 and lim.per_ip == {"10.0.0.1": 2, "10.0.0.2": 1}
    lim.close("10.0.0.1")
    assert lim.open("10.0.0.1") is None


def test_per_client_entries_exist_only_while_connections_are_open():
    lim, _ = limits(max_conns=0, max_conns_per_ip=0)  # both off: counted all the same
    for i in range(1000):
        assert lim.open(f"10.0.{i // 256}.{i % 256}") is None
    assert len(lim.per_ip) == 1000 and lim.conns == 1000
    for i in range(1000):
        lim.close(f"10.0.{i // 256}.{i % 256}")
    assert lim.per_ip == {} and lim.conns == 0


def test_open_ip_for_a_client_named_later():
    lim, _ = limits(max_conns=10, max_conns_per_ip=1)
    assert lim.open(None) is None and lim.open(None) is None  # the balancer's connections
    assert lim.open_ip("192.0.2.7") is None  # the first PROXY header names 192.0.2.7
    assert lim.open_ip("192.0.2.7") == IP_CONNS  # the second one too: over the limit
    lim.close(None)  # the refused one closes: only the listener count
    lim.close("192.0.2.7")
    assert lim.conns == 0 and lim.per_ip == {}


def test_configure_keeps_the_counts():
    lim, _ = limits(max_conns=5, max_conns_per_ip=5)
    for _ in range(4):
        lim.open("10.0.0.1")
    lim.configure(max_conns=3, max_conns_per_ip=0, rate=0.0, burst=0)  # a reload lowers the limit
    assert lim.conns == 4 and lim.per_ip == {"10.0.0.1": 4}
    assert lim.open("10.0.0.2") == MAX_CONNS
    for _ in range(2):
        lim.close("10.0.0.1")
    assert lim.open("10.0.0.2") is None


def test_for_listener_reads_the_config():
    lc = ListenerConfig(name="l", bind=Address("127.0.0.1", 1), max_conns=7, max_conns_per_ip=3,
                        handshake_rate_per_ip=RateConfig(rate=2.5, burst=4))
    lim = ListenerLimits.for_listener(lc)
    assert (lim.max_conns, lim.max_conns_per_ip, lim.rate, lim.burst) == (7, 3, 2.5, 4)
    lim = ListenerLimits.for_listener(ListenerConfig(name="l", bind=Address("127.0.0.1", 1)))
    assert (lim.max_conns, lim.max_conns_per_ip, lim.rate) == (20000, 0, 0.0)


# --- handshake token buckets -----------------------------------------------------------------------

def test_bucket_allows_the_burst_then_refills_at_the_rate():
    lim, clock = limits(rate=2.0, burst=3)
    assert [lim.handshake("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.handshake("a")
    assert wait == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert lim.handshake("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert lim.handshake("a") == 0.0
    assert lim.handshake("a") == pytest.approx(0.5)
    clock.now += 10  # refills to the burst, never above
    assert [lim.handshake("a") for _ in range(4)][-1] > 0


def test_refused_handshakes_take_no_token():
    lim, clock = limits(rate=1.0, burst=1)
    assert lim.handshake("a") == 0.0
    for _ in range(50):  # hammering while empty does not push the refill further away
        assert lim.handshake("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert lim.handshake("a") == 0.0


def test_rate_off_allows_everything_and_keeps_no_state():
    lim, _ = limits(rate=0.0, burst=0)
    assert all(lim.handshake(f"c{i}") == 0.0 for i in range(100))
    assert lim.buckets == {}


def test_refilled_buckets_are_forgotten():
    lim, clock = limits(rate=10.0, burst=5)  # full again 0.5 s after the last handshake
    for i in range(100):
        lim.handshake(f"10.0.0.{i}")
    assert len(lim.buckets) == 100
    clock.now += 0.6
    for _ in range(60):  # each handshake drops a couple of the oldest refilled buckets
        lim.handshake("10.9.9.9")
    assert len(lim.buckets) < 100 - 60
    clock.now += 0.6
    for _ in range(60):
        lim.handshake("10.9.9.9")
    assert set(lim.buckets) == {"10.9.9.9"}


def test_bucket_table_is_capped_under_a_flood_of_sources():
    lim, clock = limits(rate=1.0, burst=2, max_tracked=100)
    for i in range(10_000):  # a spoofed-source flood: every handshake from a new address
        clock.now += 0.0001
        assert lim.handshake(f"src{i}") == 0.0  # a new client always has a full bucket
        assert len(lim.buckets) <= 100
    # the recent ones are still limited: the least recently used went first
    lim.handshake("src9999")
    assert lim.handshake("src9999") > 0


def test_at_the_cap_refilled_buckets_go_before_any_recent_one():
    lim, clock = limits(rate=1.0, burst=1, max_tracked=3)
    lim.handshake("old")
    clock.now += 5  # "old" is full again
    lim.handshake("b")
    lim.handshake("c")
    lim.handshake("d")  # at the cap: "old" is dropped, "b" and "c" (empty buckets) stay
    assert set(lim.buckets) == {"b", "c", "d"}
    assert lim.handshake("b") > 0


def test_configure_with_a_new_rate_starts_buckets_afresh():
    lim, _ = limits(rate=1.0, burst=1)
    lim.handshake("a")
    assert lim.handshake("a") > 0
    lim.configure(0, 0, 1.0, 1)  # the same rate: buckets kept
    assert lim.handshake("a") > 0
    lim.configure(0, 0, 5.0, 2)
    assert lim.handshake("a") == 0.0


def test_retry_after_is_whole_seconds_at_least_one():
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"


# --- client keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
    ("::1", "::/64"),
])
def test_client_key(ip, key):
    assert client_key(ip) == key


def test_forwarded_client_is_the_rightmost_untrusted_hop():
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert forwarded_client(["198.51.100.1, 203.0.113.9"], trusted) == "203.0.113.9"
    assert forwarded_client(["198.51.100.1", "203.0.113.9, 10.1.2.3"], trusted) == "203.0.113.9"
    assert forwarded_client(["10.0.0.1, 10.0.0.2"], trusted) is None  # only our own proxies
    assert forwarded_client([], trusted) is None
    assert forwarded_client(["203.0.113.9, not-an-ip"], trusted) is None
    assert forwarded_client(["2001:db8::1"], trusted) == "2001:db8::/64"


# --- the refusal log line ----------------------------------------------------------------------------

class _Metrics:
    def __init__(self) -> None:
        self.rejected_calls: list[tuple[str, str]] = []

    def rejected(self, listener: str, reason: str) -> None:
        self.rejected_calls.append((listener, reason))


class _Ctx:
    def __init__(self, metrics) -> None:
        self.config = ListenerConfig(name="edge", bind=Address("127.0.0.1", 1))
        self.state = type("State", (), {"metrics": metrics})()


def test_refusals_are_all_counted_and_logged_at_most_once_per_interval(caplog):
    lim, clock = limits(max_conns=1)
    metrics = _Metrics()
    ctx = _Ctx(metrics)
    lim.open("a")
    with caplog.at_level(logging.INFO, logger="wsproxy"):
        for _ in range(5):
            refused_connection(ctx, lim, lim.open("b"), "b:1")
        clock.now += LOG_INTERVAL
        refused_connection(ctx, lim, lim.open("b"), "b:2")
        refused_connection(ctx, lim, lim.open("b"), "b:3")
    assert metrics.rejected_calls == [("edge", MAX_CONNS)] * 7
    lines = [r for r in caplog.records if r.getMessage().startswith("connection refused")]
    assert [r.fields["refused"] for r in lines] == [1, 5]  # the first at once; then 4 held + this one
    assert lines[0].fields["listener"] == "edge" and lines[0].fields["rejection"] == MAX_CONNS
    refused_connection(_Ctx(None), lim, MAX_CONNS, "c:1")  # no metrics: only the log throttle
