"""The per-worker ``shared`` store: TTLs on an injected clock, incr/add/touch, bounds, types."""

from __future__ import annotations

import math

import pytest

from wsproxy.scripting.shared import SharedStore


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(clock):
    return SharedStore(clock=clock)


def test_set_get_and_ttl_expiry(store, clock):
    store.set("a", "1", ttl=10)
    store.set("forever", True)
    clock.now += 9.9
    assert store.get("a") == "1" and store.ttl("a") == pytest.approx(0.1)
    clock.now += 0.1
    assert store.get("a") is None and store.ttl("a") is None
    assert store.get("forever") is True and store.ttl("forever") == math.inf


def test_ttl_zero_or_none_means_no_expiry(store, clock):
    store.set("a", 1, ttl=0)
    clock.now += 1e9
    assert store.get("a") == 1


def test_incr(store, clock):
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.incr("n", -2.5) == 3.5
    assert store.incr("rate", 1, ttl=1) == 1
    assert store.incr("rate") == 2  # keeps its own expiry
    clock.now += 1
    assert store.incr("rate") == 1  # expired: starts again, no expiry now
    store.set("s", "text")
    with pytest.raises(TypeError, match="holds a str, not a number"):
        store.incr("s")
    with pytest.raises(TypeError, match="delta must be a number"):
        store.incr("n", "1")


def test_add_touch_delete(store, clock):
    assert store.add("k", "v", ttl=5) is True
    assert store.add("k", "other") is False and store.get("k") == "v"
    clock.now += 4
    assert store.touch("k", 5) is True
    clock.now += 4
    assert store.get("k") == "v"
    assert store.touch("missing", 5) is False
    assert store.delete("k") is True and store.delete("k") is False
    clock.now += 100
    assert store.add("k", "again") is True


@pytest.mark.parametrize("call, error", [
    (lambda s: s.set("k", [1]), TypeError),
    (lambda s: s.set("k", None), TypeError),
    (lambda s: s.set("", 1), TypeError),
    (lambda s: s.set(1, 1), TypeError),
    (lambda s: s.set("k", 1, ttl=-1), ValueError),
    (lambda s: s.set("k", 1, ttl="5"), ValueError),
    (lambda s: s.set("k", 1, ttl=float("nan")), ValueError),
])
def test_types(store, call, error):
    with pytest.raises(error):
        call(store)


def test_bytes_from_lua_round_trip(store):
    store.set(b"k\xff", b"\x00\xfe")
    assert store.get("k\udcff") == "\x00\udcfe"
    assert store.get(b"k\xff").encode("utf-8", "surrogateescape") == b"\x00\xfe"


def test_bounded_size_sweeps_then_evicts_oldest(clock):
    store = SharedStore(clock=clock, max_keys=3)
    store.set("old", 1, ttl=1)
    store.set("b", 2)
    store.set("c", 3)
    clock.now += 2
    store.set("d", 4)  # the expired key makes room
    assert (store.get("b"), store.get("c"), store.get("d"), len(store)) == (2, 3, 4, 3)
    store.set("e", 5)  # nothing expired: the oldest insert goes
    assert store.get("b") is None and len(store) == 3


def test_sweep(store, clock):
    for i in range(10):
        store.set(f"k{i}", i, ttl=1 if i % 2 else None)
    clock.now += 1
    assert store.sweep() == 5 and len(store) == 5


def test_an_empty_store_is_still_truthy():
    store = SharedStore()
    assert len(store) == 0 and (store or None) is store
