"""The node table, the live registry and the control plane's planner (no sockets here:
tests/integration/test_drain_rebalance.py runs the same through the proxy).

Relays here are small stand-ins with the three things LiveConnections touches
(``closed_by``, ``done``, ``close_both``); closing one "reconnects" it to the least loaded
member, which is what clients answering Close 1012 do through least_conn.
"""

from __future__ import annotations

import os
import random

import pytest

from wsproxy.config import parse_config
from wsproxy.node.control import ControlPlane, _closes_needed
from wsproxy.node.live import LiveConnections
from wsproxy.node.table import (ADMIN, COUNTER, DRAINING, ENABLED, GAUGE, REBALANCE_CLOSES, WEIGHT, NodeTable)


class _Done:
    def __init__(self) -> None:
        self.value = False

    def done(self) -> bool:
        return self.value


class Relay:
    def __init__(self, world, col: int) -> None:
        self.world, self.col = world, col
        self.closed_by = None
        self.done = _Done()
        self.codes: list[tuple[int, str]] = []

    def close_both(self, code: int, reason: str) -> None:
        self.codes.append((code, reason))
        self.closed_by = "proxy"
        self.world.closed(self)


class World:
    """One worker process (row 1) with WebSockets on a pool's members; closed ones come back
    to the member with the fewest connections, as least_conn would send them."""

    def __init__(self, table: NodeTable, cols: list[int], row: int = 1) -> None:
        self.table, self.cols, self.row = table, cols, row
        self.live = LiveConnections(table, rng=random.Random(1))
        self.closes: list[Relay] = []

    def open(self, col: int) -> Relay:
        relay = Relay(self, col)
        self.table.row = self.row
        self.table.add_conns(col, 1)
        self.live.add(col, relay)
        return relay

    def closed(self, relay: Relay) -> None:
        self.closes.append(relay)
        self.table.row = self.row
        self.table.add_conns(relay.col, -1)
        self.live.discard(relay.col, relay)
        relay.done.value = True
        self.open(min(self.cols, key=self.table.conns))

    def tick(self, now: float) -> None:
        self.table.row = self.row
        self.live.tick(now)
        self.table.row = 0


def config(rebalance: str = "", slow_start: str = "0s") -> object:
    return parse_config({
        "listeners": {"web": {"bind": "127.0.0.1:8080", "routes": [{"pool": "chat"}]}},
        "pools": {"chat": {
            "balance": "least_conn",
            "members": ["127.0.0.1:9001", "127.0.0.1:9002"],
            "slow_start": slow_start,
            **({"rebalance": eval(rebalance)} if rebalance else {}),
        }},
    })


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(cfg):
    table = NodeTable(rows=4, members=8, counters=16)
    clock = Clock()
    control = ControlPlane(cfg, table, clock=clock)
    row = table.claim_row(os.getpid(), 1)
    cols = [table.member_slot("chat", "127.0.0.1:9001"), table.member_slot("chat", "127.0.0.1:9002")]
    world = World(table, cols, row)
    return table, clock, control, world, cols


def run(control, world, clock, seconds: float, step: float = 0.1) -> None:
    for _ in range(int(round(seconds / step))):
        clock.now += step
        control.tick()
        world.tick(clock.now)


# -- the table --------------------------------------------------------------------------
def test_counts_are_summed_over_rows_and_vanish_with_a_retired_row() -> None:
    table = NodeTable(rows=4, members=4, counters=4)
    col = table.member_slot("p", "a:1")
    total = table.counter_slot(("handshakes",), COUNTER)
    active = table.counter_slot(("active",), GAUGE)
    row = table.claim_row(1234, 1)
    table.row = row
    table.add_conns(col, 3)
    table.add(total, 5)
    table.add(active, 2)
    table.row = 0
    table.add_conns(col, 1)
    assert table.conns(col) == 4 and table.total(total) == 5 and table.total(active) == 2
    table.retire_row(row)
    assert table.conns(col) == 1  # the dead process's connections are gone, none stuck
    assert table.total(total) == 5  # a counter never goes backwards
    assert table.total(active) == 0  # a gauge goes with its process
    assert table.live_rows() == []


def test_a_count_never_goes_below_zero() -> None:
    table = NodeTable(rows=2, members=2, counters=1)
    table.add_conns(0, -1)
    assert table.conns(0) == 0


def test_rows_are_shared_with_a_forked_child() -> None:
    table = NodeTable(rows=4, members=4, counters=1)
    col = table.member_slot("p", "a:1")
    row = table.claim_row(0, 1)
    pid = os.fork()
    if pid == 0:  # the child: count on its own row, then vanish without cleaning up
        table.row = row
        table.add_conns(col, 7)
        os._exit(0)
    table.set_row_pid(row, pid)
    os.waitpid(pid, 0)
    table.refresh_rows()
    assert table.conns(col) == 7
    table.retire_row(row)
    assert table.conns(col) == 0


# -- rebalancing --------------------------------------------------------------------------
def test_closes_needed_is_the_minimum_to_get_within_threshold() -> None:
    assert _closes_needed([(0, 200, 1.0), (1, 0, 1.0)], 0.1) == 90
    assert _closes_needed([(0, 110, 1.0), (1, 90, 1.0)], 0.1) == 0
    assert _closes_needed([(0, 300, 2.0), (1, 0, 1.0)], 0.0) == 100
    assert _closes_needed([(0, 5, 1.0)], 0.0) == 0  # one member: nothing to move


def test_rebalance_moves_200_0_to_within_threshold_with_the_minimum_of_closes() -> None:
    cfg = config('{"threshold": 0.1, "rate": 50, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    relays = [world.open(a) for _ in range(200)]
    run(control, world, clock, 10.0)
    assert (table.conns(a), table.conns(b)) == (110, 90)
    assert len(world.closes) == 90
    assert all(r.codes == [(1012, "rebalancing")] for r in world.closes)
    assert world.closes == relays[:90]  # oldest first
    assert table.ctrl(a, REBALANCE_CLOSES) == 90
    assert control.status()["pools"]["chat"]["rebalance"] is None  # the episode ended


def test_rebalance_respects_the_rate() -> None:
    cfg = config('{"threshold": 0.1, "rate": 10, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(200):
        world.open(a)
    run(control, world, clock, 2.0)
    assert 15 <= len(world.closes) <= 21  # 10 per second, one tick of slack


def test_rebalance_stops_at_max_fraction() -> None:
    cfg = config('{"threshold": 0.1, "rate": 100, "max_fraction": 0.25}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(200):
        world.open(a)
    run(control, world, clock, 5.0)
    assert len(world.closes) == 50
    assert table.conns(a) == 150


def test_without_auto_only_an_explicit_rebalance_moves_connections() -> None:
    cfg = config('{"auto": False, "rate": 100, "threshold": 0.0, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(10):
        world.open(a)
    run(control, world, clock, 1.0)
    assert world.closes == []
    answer = control.rebalance("chat")
    assert answer["closes_planned"] == 5
    run(control, world, clock, 1.0)
    assert (table.conns(a), table.conns(b)) == (5, 5)


def test_a_pool_without_a_policy_rebalances_on_demand_with_the_defaults() -> None:
    table, clock, control, world, (a, b) = setup(config())
    for _ in range(40):
        world.open(a)
    run(control, world, clock, 1.0)
    assert world.closes == []
    control.rebalance("chat")
    run(control, world, clock, 5.0)
    assert table.conns(a) <= 24 and len(world.closes) <= 20  # threshold 0.2, max_fraction 0.5


def test_weights_set_the_fair_share() -> None:
    table, clock, control, world, (a, b) = setup(config('{"threshold": 0.0, "rate": 100, "max_fraction": 1.0}'))
    control.set_weight("chat", "127.0.0.1:9002", 3)
    for _ in range(40):
        world.open(a)

    def reopen(relay):  # weighted least_conn: the member with the lowest conns / weight
        world.closes.append(relay)
        table.row = world.row
        table.add_conns(relay.col, -1)
        world.live.discard(relay.col, relay)
        relay.done.value = True
        world.open(b if table.conns(b) / 3 < table.conns(a) else a)

    world.closed = reopen
    run(control, world, clock, 2.0)
    assert (table.conns(a), table.conns(b)) == (10, 30)


def test_a_draining_member_is_left_out_of_the_fair_share() -> None:
    table, clock, control, world, (a, b) = setup(config('{"threshold": 0.0, "rate": 100, "max_fraction": 1.0}'))
    for _ in range(10):
        world.open(a)
    control.drain("chat", "127.0.0.1:9002", spread=0)
    run(control, world, clock, 1.0)
    assert not [r for r in world.closes if r.codes[0][1] == "rebalancing"]


# -- drain --------------------------------------------------------------------------------
def test_drain_closes_every_websocket_of_the_member_within_the_spread() -> None:
    table, clock, control, world, (a, b) = setup(config())
    on_a = [world.open(a) for _ in range(50)]
    on_b = [world.open(b) for _ in range(5)]
    world.closed = lambda relay: (world.closes.append((clock.now, relay)), world.live.discard(relay.col, relay))
    start = clock.now
    control.drain("chat", "127.0.0.1:9001", spread=2.0)
    assert table.ctrl(a, ADMIN) == DRAINING
    run(control, world, clock, 2.5)
    closed = [relay for _, relay in world.closes]
    assert sorted(map(id, closed)) == sorted(map(id, on_a))
    assert all(r.codes == [(1012, "member draining")] for r in on_a)
    assert all(r.codes == [] for r in on_b)
    times = [t - start for t, _ in world.closes]
    assert max(times) <= 2.2 and max(times) - min(times) >= 1.0  # spread, not all at once
    assert control.status()["pools"]["chat"]["members"][0]["state"] == "draining"


def test_enable_during_the_window_keeps_the_rest() -> None:
    table, clock, control, world, (a, b) = setup(config())
    for _ in range(100):
        world.open(a)
    world.closed = lambda relay: (world.closes.append(relay), world.live.discard(relay.col, relay))
    control.drain("chat", "127.0.0.1:9001", spread=10.0)
    run(control, world, clock, 1.0)
    control.enable("chat", "127.0.0.1:9001")
    assert table.ctrl(a, ADMIN) == ENABLED
    closed_before = len(world.closes)
    run(control, world, clock, 12.0)
    assert 0 < closed_before < 40 and len(world.closes) == closed_before


def test_unknown_pool_or_member_and_bad_values() -> None:
    table, clock, control, world, cols = setup(config())
    with pytest.raises(KeyError):
        control.drain("nope", "127.0.0.1:9001")
    with pytest.raises(KeyError):
        control.enable("chat", "127.0.0.1:1")
    with pytest.raises(ValueError):
        control.set_weight("chat", "127.0.0.1:9001", -1)
    assert table.ctrl(cols[0], WEIGHT) == -1


def test_status_has_the_config_md_shape() -> None:
    table, clock, control, world, (a, b) = setup(config())
    world.open(a)
    status = control.status()
    members = status["pools"]["chat"]["members"]
    assert status["pools"]["chat"]["balance"] == "least_conn"
    assert [(m["addr"], m["state"], m["conns"], m["weight"]) for m in members] == [
        ("127.0.0.1:9001", "up", 1, 1), ("127.0.0.1:9002", "up", 0, 1)]
    assert status["generation"] == 1


def test_clients_that_come_back_late_do_not_make_the_planner_overshoot() -> None:
    cfg = config('{"threshold": 0.1, "rate": 50, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(200):
        world.open(a)
    pending: list[float] = []

    def late(relay):  # the client reconnects 2 s after its Close 1012
        world.closes.append(relay)
        table.row = world.row
        table.add_conns(relay.col, -1)
        world.live.discard(relay.col, relay)
        relay.done.value = True
        pending.append(clock.now + 2.0)

    world.closed = late
    for _ in range(150):
        clock.now += 0.1
        while pending and pending[0] <= clock.now:
            pending.pop(0)
            world.open(min((a, b), key=table.conns))
        control.tick()
        world.tick(clock.now)
    assert len(world.closes) == 90, len(world.closes)  # the minimum, as with instant reconnects
    assert (table.conns(a), table.conns(b)) == (110, 90)


def test_a_shed_request_a_process_cannot_carry_out_is_settled() -> None:
    cfg = config('{"threshold": 0.0, "rate": 100, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(10):
        world.open(a)
    table.ask_shed(world.row, b, 3)  # b has no WebSocket in this process
    world.tick(clock.now)
    assert table.shed_wanted(b, world.row) == 0
    run(control, world, clock, 1.0)
    assert (table.conns(a), table.conns(b)) == (5, 5)  # the planner was not held up


def test_http_connections_are_not_asked_to_shed() -> None:
    cfg = config('{"threshold": 0.0, "rate": 100, "max_fraction": 1.0}')
    table, clock, control, world, (a, b) = setup(cfg)
    table.row = world.row
    table.add_conns(a, 10)  # ten long polls: counted, but no WebSocket to close
    table.row = 0
    run(control, world, clock, 1.0)
    assert world.closes == [] and table.shed_wanted(a, world.row) == 0


def test_an_episode_that_spent_its_budget_ends_and_a_manual_rebalance_starts_another() -> None:
    cfg = config('{"threshold": 0.1, "rate": 100, "max_fraction": 0.25}')
    table, clock, control, world, (a, b) = setup(cfg)
    for _ in range(200):
        world.open(a)
    run(control, world, clock, 2.0)
    assert len(world.closes) == 50
    assert control.status()["pools"]["chat"]["rebalance"] is None  # ended, not stuck
    run(control, world, clock, 2.0)
    assert len(world.closes) == 50  # settling: no automatic episode right away
    assert control.rebalance("chat")["closes_planned"] > 0
    run(control, world, clock, 2.0)
    assert len(world.closes) > 50
