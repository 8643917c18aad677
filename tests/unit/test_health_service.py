"""HealthService's rise/fall state machine and what it writes (table cells, log lines,
snapshot), plus the pure helpers of the http and ws checks. The checks against real
servers are in tests/integration/test_health.py."""

from __future__ import annotations

import logging

import pytest

from wsproxy.config.schema import Address, Config, HealthConfig, MemberConfig, PoolConfig, ServerConfig
from wsproxy.health import CHECKS, CheckFailed
from wsproxy.health import http as http_check
from wsproxy.health import ws as ws_check
from wsproxy.health.service import HealthService, _Watch
from wsproxy.node.table import (
    CHECKS_FAILED,
    CHECKS_OK,
    HEALTH,
    HEALTH_CHANGES,
    HEALTH_DOWN,
    HEALTH_UP,
    RTT_US,
    UP_SINCE_MS,
    NodeTable,
    now_ms,
)


def config_with(health: HealthConfig | None, ports=(9001,)) -> Config:
    members = tuple(MemberConfig(Address("127.0.0.1", p)) for p in ports)
    pools = {"chat": PoolConfig(name="chat", members=members, health=health),
             "plain": PoolConfig(name="plain", members=(MemberConfig(Address("127.0.0.1", 9100)),))}
    return Config(server=ServerConfig(), listeners={}, pools=pools)


@pytest.fixture
def logged():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("wsproxy")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def watched(health: HealthConfig):
    """A service (not started: no tasks) with its one watch, as start() would make it."""
    table = NodeTable(rows=1, members=8, counters=8)
    service = HealthService(config_with(health), table)
    (key, (col, addr, cfg)), = service._wanted(service.config).items()
    watch = _Watch(key[0], addr, col, cfg)
    service._watches[key] = watch
    return service, table, watch


def test_fall_failures_mark_down_and_rise_passes_mark_up(logged):
    service, table, watch = watched(HealthConfig(type="tcp", rise=2, fall=3))
    col = watch.col
    service._record(watch, "Connection refused", -1)
    service._record(watch, "Connection refused", -1)
    assert (watch.state, table.ctrl(col, HEALTH), table.ctrl(col, CHECKS_FAILED)) == ("up", HEALTH_UP, 2)
    assert not logged
    service._record(watch, "Connection refused", -1)
    assert (watch.state, table.ctrl(col, HEALTH), table.ctrl(col, HEALTH_CHANGES)) == ("down", HEALTH_DOWN, 1)
    (down,) = logged
    assert down.levelno == logging.WARNING and down.getMessage() == "member down"
    assert down.fields["reason"] == "Connection refused" and down.fields["member"] == "127.0.0.1:9001"
    assert table.ctrl(col, UP_SINCE_MS) == 0  # only a return starts a slow start

    service._record(watch, None, 1500)
    service._record(watch, "timeout (connect)", -1)  # a failure in between: rise starts over
    service._record(watch, None, 1500)
    assert (watch.state, table.ctrl(col, HEALTH)) == ("down", HEALTH_DOWN)
    before = now_ms()
    service._record(watch, None, 2500)
    assert (watch.state, table.ctrl(col, HEALTH), table.ctrl(col, HEALTH_CHANGES)) == ("up", HEALTH_UP, 2)
    assert before <= table.ctrl(col, UP_SINCE_MS) <= now_ms()
    assert (table.ctrl(col, CHECKS_OK), table.ctrl(col, CHECKS_FAILED), table.ctrl(col, RTT_US)) == (3, 4, 2500)
    up = logged[-1]
    assert up.levelno == logging.INFO and up.getMessage() == "member up" and up.fields["rtt_ms"] == 2.5
    assert len(logged) == 2  # one line per transition, none per check


def test_snapshot_shape():
    service, table, watch = watched(HealthConfig(type="ws", rise=1, fall=1))
    snap = service.snapshot()
    assert set(snap) == {"chat"}  # pools without health are not in it
    entry = snap["chat"]["127.0.0.1:9001"]
    assert entry["state"] == "up" and entry["rtt_ms"] is None and entry["last_error"] is None
    service._record(watch, "status 503, not 101", -1)
    service._record(watch, None, 1234)
    entry = service.snapshot()["chat"]["127.0.0.1:9001"]
    assert entry["state"] == "up" and entry["rtt_ms"] == 1.234
    assert (entry["checks_ok"], entry["checks_failed"]) == (1, 1)
    assert entry["last_error"] == "status 503, not 101" and entry["since"] > 0


def test_update_without_start_only_takes_the_config():
    service, table, watch = watched(HealthConfig(type="tcp", rise=1, fall=1))
    service._record(watch, "refused", -1)
    assert table.ctrl(watch.col, HEALTH) == HEALTH_DOWN
    service.update(config_with(None))  # the pool drops its checks: its members are up again
    assert table.ctrl(watch.col, HEALTH) == HEALTH_UP and service.snapshot() == {}
    assert table.ctrl(watch.col, UP_SINCE_MS) > 0  # coming back starts a slow start


def test_one_check_per_type():
    assert set(CHECKS) == {"tcp", "http", "ws"}


@pytest.mark.parametrize("line, status", [(b"HTTP/1.1 200 OK\r\n", 200), (b"HTTP/1.0 503 Busy\r\n", 503),
                                          (b"HTTP/1.1 204\r\n", 204)])
def test_status_line(line, status):
    assert http_check.parse_status(line) == status


@pytest.mark.parametrize("line", [b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 2000 x\r\n", b"\r\n", b"HTTP/2 200\r\n"])
def test_not_a_status_line(line):
    with pytest.raises(CheckFailed, match="not an HTTP response"):
        http_check.parse_status(line)


@pytest.mark.parametrize("status, wanted, ok", [
    (200, (), True), (302, (), True), (404, (), False), (503, (), False),
    (503, (503,), True), (200, (204,), False), (204, (200, 204), True),
])
def test_which_statuses_pass(status, wanted, ok):
    assert http_check.passes(status, wanted) is ok


def test_requests_name_the_host_and_close():
    assert http_check.request(Address("::1", 80), "/healthz") == (
        b"GET /healthz HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\nUser-Agent: wsproxy-health\r\n"
        b"Accept: */*\r\n\r\n")
    head = ws_check.handshake_request(Address("127.0.0.1", 9001), "/ws", "dGhlIHNhbXBsZSBub25jZQ==")
    assert head.startswith(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nUpgrade: websocket\r\n")
    assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" in head
