"""Health against real servers: HealthService's tcp, http and ws checks (in this process,
on this test's event loop, against asyncio / websockets servers on free ports), then active
and passive health through the proxy.

Intervals are 50-100 ms so each test takes a second or two.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import time

import pytest
from websockets.asyncio.server import serve

from wsproxy.config import parse_config
from wsproxy.health import HealthService
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
)

from .support import HOST, free_port, run, site_conf, ws_handshake_request, ws_key

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def config_for(ports, health: dict | None, pool: str = "p"):
    members = [f"{HOST}:{p}" for p in ports]
    pools = {pool: {"members": members, **({"health": health} if health else {})}}
    return parse_config({
        "listeners": {"public": {"bind": f"{HOST}:1", "routes": [{"pool": pool}]}},
        "pools": pools,
    })


class Logged(logging.Handler):
    """The wsproxy log lines of this test (HealthService logs with wsproxy.logs.event)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record) -> None:
        self.records.append(record)

    def named(self, msg: str) -> list[dict]:
        return [r.fields for r in self.records if r.getMessage() == msg]


@pytest.fixture
def logged():
    handler = Logged()
    logger = logging.getLogger("wsproxy")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def until(pred, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Watched:
    """A started HealthService on a fresh table, and the column of each member port."""

    def __init__(self, ports, health: dict) -> None:
        self.table = NodeTable(rows=1, members=16, counters=16)
        self.config = config_for(ports, health)
        self.service = HealthService(self.config, self.table, rng=random.Random(7))
        self.cols = {p: self.table.member_slot("p", f"{HOST}:{p}") for p in ports}

    def cell(self, port: int, field: int) -> int:
        return self.table.ctrl(self.cols[port], field)

    def entry(self, port: int) -> dict:
        return self.service.snapshot()["p"][f"{HOST}:{port}"]

    async def __aenter__(self) -> Watched:
        self.service.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.service.stop()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# -- tcp ------------------------------------------------------------------------------------


def test_tcp_check_marks_a_closed_port_down_then_up_when_it_listens(logged):
    port = free_port()

    async def main():
        async with Watched([port], {"type": "tcp", "interval": "50ms", "timeout": "50ms",
                                    "rise": 2, "fall": 2}) as w:
            await until(lambda: w.cell(port, HEALTH) == HEALTH_DOWN, what="down")
            (down,) = logged.named("member down")
            assert down["fails"] == 2 and "refused" in down["reason"].lower()
            assert w.entry(port)["state"] == "down" and w.cell(port, UP_SINCE_MS) == 0

            accepted = []

            async def accept(reader, writer):
                accepted.append(time.monotonic())
                writer.close()

            server = await asyncio.start_server(accept, HOST, port)
            async with server:
                await until(lambda: w.cell(port, HEALTH) == HEALTH_UP, what="up")
                assert len(accepted) >= 2  # rise = 2 passes
                assert w.cell(port, UP_SINCE_MS) > 0  # slow start begins now
                assert w.cell(port, HEALTH_CHANGES) == 2
                assert 0 <= w.cell(port, RTT_US) < 1_000_000  # the connect time
                assert w.entry(port)["state"] == "up" and w.cell(port, CHECKS_OK) >= 2
                (up,) = logged.named("member up")
                assert up["member"] == f"{HOST}:{port}" and up["check"] == "tcp"

    run(main(), timeout=20)


def test_checks_are_spread_by_a_random_offset_and_jitter():
    async def main():
        times: list[float] = []

        async def accept(reader, writer):
            times.append(time.monotonic())
            writer.close()

        server = await asyncio.start_server(accept, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            w = Watched([port], {"type": "tcp", "interval": "100ms", "timeout": "100ms", "jitter": 0.5})
            started = time.monotonic()
            async with w:
                await until(lambda: len(times) >= 8, timeout=5, what="8 checks")
        first = times[0] - started
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert first < 0.15  # within the first interval (plus scheduling)
        assert all(0.04 < g < 0.25 for g in gaps), gaps  # interval x (1 +/- 0.5), plus the check
        assert max(gaps) - min(gaps) > 0.01, gaps  # not a fixed period

    run(main(), timeout=20)


# -- http -----------------------------------------------------------------------------------


class HttpMember:
    """A raw asyncio HTTP server answering every request with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[bytes] = []

    async def handle(self, reader, writer) -> None:
        try:
            self.requests.append(await read_head(reader))
            writer.write(b"HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n\r\nok" % self.status)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self):
        self.server = await asyncio.start_server(self.handle, HOST, 0)
        return self.server.sockets[0].getsockname()[1]


def test_http_check_follows_503_then_200(logged):
    async def main():
        member = HttpMember(503)
        port = await member.start()
        async with member.server, Watched([port], {"type": "http", "path": "/healthz", "interval": "50ms",
                                                   "timeout": "50ms", "rise": 1, "fall": 2}) as w:
            await until(lambda: w.cell(port, HEALTH) == HEALTH_DOWN, what="down")
            assert w.entry(port)["last_error"] == "status 503"
            assert logged.named("member down")[0]["reason"] == "status 503"
            member.status = 200
            await until(lambda: w.cell(port, HEALTH) == HEALTH_UP, what="up")
            assert w.cell(port, CHECKS_FAILED) >= 2 and w.cell(port, CHECKS_OK) >= 1
        head = member.requests[0].decode()
        assert head.startswith("GET /healthz HTTP/1.1\r\n")
        assert f"\r\nHost: {HOST}:{port}\r\n" in head and "\r\nConnection: close\r\n" in head

    run(main(), timeout=20)


def test_http_check_with_configured_statuses():
    async def main():
        member = HttpMember(200)
        port = await member.start()
        async with member.server, Watched([port], {"type": "http", "interval": "50ms", "timeout": "50ms",
                                                   "rise": 1, "fall": 1, "status": [204, 503]}) as w:
            await until(lambda: w.cell(port, HEALTH) == HEALTH_DOWN, what="down on 200")
            assert w.entry(port)["last_error"] == "status 200"
            member.status = 503  # listed: a maintenance page that is expected to pass
            await until(lambda: w.cell(port, HEALTH) == HEALTH_UP, what="up on 503")

    run(main(), timeout=20)


def test_http_check_fails_on_a_member_that_never_answers():
    async def main():
        async def silent(reader, writer):
            await reader.read()  # hold the connection, say nothing
            writer.close()

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server, Watched([port], {"type": "http", "interval": "50ms", "timeout": "50ms",
                                            "rise": 1, "fall": 2}) as w:
            await until(lambda: w.cell(port, HEALTH) == HEALTH_DOWN, what="down")
            assert w.entry(port)["last_error"] == "timeout (response)"

    run(main(), timeout=20)


# -- ws -------------------------------------------------------------------------------------


def test_ws_check_passes_on_a_real_websocket_server_and_records_the_rtt():
    async def main():
        seen = []

        async def handler(ws):
            await ws.send("welcome")  # a frame before the pong: skipped by the check
            async for _ in ws:
                pass
            seen.append((ws.request.path, ws.close_code))

        async with serve(handler, HOST, 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with Watched([port], {"type": "ws", "path": "/live", "interval": "50ms", "timeout": "50ms",
                                        "rise": 1, "fall": 1}) as w:
                await until(lambda: w.cell(port, CHECKS_OK) >= 3, what="3 passing checks")
                await until(lambda: len(seen) >= 2, what="the server to see the closes")
                assert w.cell(port, CHECKS_FAILED) == 0 and w.cell(port, HEALTH) == HEALTH_UP
                assert 0 < w.cell(port, RTT_US) < 50_000
                entry = w.entry(port)
                assert entry["state"] == "up" and 0 < entry["rtt_ms"] < 50 and entry["last_error"] is None
        assert seen[0] == ("/live", 1000)  # a clean, masked Close 1000 (websockets checks both)

    run(main(), timeout=20)


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def raw_ws_member(answer):
    """A raw server: reads the handshake, writes ``answer(key)``, then reads and ignores
    everything (never a pong)."""
    async def handle(reader, writer):
        try:
            head = (await read_head(reader)).decode()
            key = next(l.split(":", 1)[1].strip() for l in head.split("\r\n")
                       if l.lower().startswith("sec-websocket-key:"))
            writer.write(answer(key))
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize("answer, reason", [
    (lambda key: (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n").encode(), "timeout (pong)"),
    (lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "status 200, not 101"),
    (lambda key: (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n"),
     "101 has a wrong or missing Sec-WebSocket-Accept"),
], ids=["no-pong", "not-101", "bad-accept"])
def test_ws_check_fails(answer, reason, logged):
    async def main():
        server = await asyncio.start_server(raw_ws_member(answer), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server, Watched([port], {"type": "ws", "interval": "100ms", "timeout": "100ms",
                                            "rise": 1, "fall": 2}) as w:
            await until(lambda: w.cell(port, HEALTH) == HEALTH_DOWN, what="down")
            assert w.entry(port)["last_error"] == reason
            assert w.cell(port, RTT_US) == -1  # never passed
            assert logged.named("member down")[0]["reason"] == reason

    run(main(), timeout=20)


# -- reload --------------------------------------------------------------------------------


def test_update_keeps_stops_and_starts_watches():
    async def main():
        closed = free_port()

        async def accept(reader, writer):
            writer.close()

        server = await asyncio.start_server(accept, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        health = {"type": "tcp", "interval": "50ms", "timeout": "50ms", "rise": 1, "fall": 1}
        async with server, Watched([closed], health) as w:
            table, service = w.table, w.service
            await until(lambda: w.cell(closed, HEALTH) == HEALTH_DOWN, what="down")
            # Reload 1: the pool keeps the dead member and gains a live one.
            service.update(config_for([closed, port], health))
            new_col = table.member_slot("p", f"{HOST}:{port}")
            await until(lambda: table.ctrl(new_col, CHECKS_OK) >= 2, what="checks of the new member")
            assert w.cell(closed, HEALTH) == HEALTH_DOWN  # kept its state
            assert w.cell(closed, HEALTH_CHANGES) == 1
            # Reload 2: health removed: the checks stop, and nobody stays down for a check
            # that no longer exists.
            service.update(config_for([closed, port], None))
            assert service.snapshot() == {}
            assert w.cell(closed, HEALTH) == HEALTH_UP
            await asyncio.sleep(0.05)
            counts = (table.ctrl(new_col, CHECKS_OK), w.cell(closed, CHECKS_FAILED))
            await asyncio.sleep(0.2)
            assert (table.ctrl(new_col, CHECKS_OK), w.cell(closed, CHECKS_FAILED)) == counts
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")]

    run(main(), timeout=20)


# -- through the proxy ------------------------------------------------------------------------


async def upgrade(port: int, path: str = "/") -> tuple[int, bytes]:
    """A WebSocket handshake through the proxy: (status, the rest of the head)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(ws_handshake_request(path, key=ws_key()))
        head = await asyncio.wait_for(read_head(reader), 5)
        return int(head.split()[1]), head
    finally:
        writer.close()


def test_active_checks_take_a_silent_member_out_of_the_proxy(members, proxy):
    echo = members.ws("echo")
    silent = members.blackhole("silent")  # accepts TCP, never answers: passive health cannot tell
    conf = site_conf({"chat": {
        "balance": "round_robin", "members": [silent.addr, echo.addr], "response_timeout": "20s",
        "health": {"type": "ws", "interval": "100ms", "timeout": "100ms", "rise": 1, "fall": 2},
    }})
    p = proxy(conf)
    down = p.wait_log(lambda l: l.get("msg") == "member down", timeout=10)
    assert down is not None, p.stderr_text()[-3000:]
    assert down["member"] == silent.addr and down["reason"] == "timeout (handshake)"

    async def main():
        return [(await upgrade(p.port))[0] for _ in range(6)]

    started = time.monotonic()
    assert run(main(), timeout=30) == [101] * 6
    assert time.monotonic() - started < 5  # none of them waited on the silent member
    assert {l["member"] for l in p.access_logs("ws")} <= {echo.addr}


def test_passive_ejection_on_503_answers_to_upgrades(members, proxy):
    echo = members.ws("echo")

    async def main():
        bad = HttpMember(503)
        bad_port = await bad.start()
        conf = site_conf({"chat": {
            "balance": "round_robin", "members": [f"{HOST}:{bad_port}", echo.addr],
            "fail_threshold": 2, "down_time": "30s", "retries": 0,
        }})
        p = await asyncio.to_thread(proxy, conf)
        statuses = [(await upgrade(p.port))[0] for _ in range(8)]
        return p, bad, bad_port, statuses

    p, bad, bad_port, statuses = run(main(), timeout=60)
    # Round robin alternates: the 503 member answers the 1st and 3rd, and the 2nd 503 in a
    # row ejects it; every later upgrade goes to the echo member.
    assert statuses == [503, 101, 503, 101, 101, 101, 101, 101]
    assert len(bad.requests) == 2
    ejected = p.wait_log(lambda l: l.get("msg") == "member ejected")
    assert ejected is not None, p.stderr_text()[-3000:]
    assert ejected["member"] == f"{HOST}:{bad_port}" and ejected["reason"] == "answered 503 to an upgrade"
    assert ejected["for_s"] == 30.0
    assert json.dumps(ejected)  # one JSON line, as every log line


def test_slow_start_ramps_a_member_that_comes_back(members, proxy, tmp_path):
    """A member back up after its checks failed takes a ramped share of new WebSockets,
    shows as slow_start in the admin API, then up once slow_start has passed."""
    import urllib.request

    from websockets.asyncio.client import connect

    from .support import start_member, wait_until

    a = members.ws("a")
    b_port = free_port()
    b_addr = f"{HOST}:{b_port}"
    b = start_member("ws_echo.py", "b", tmp_path, extra_args=("--port", str(b_port)))
    admin_port = free_port()
    p = proxy(site_conf({"chat": {
        "balance": "least_conn", "members": [a.addr, b_addr], "slow_start": "4s",
        "health": {"type": "tcp", "interval": "100ms", "timeout": "100ms", "rise": 1, "fall": 1},
    }}, server={"admin": f"{HOST}:{admin_port}"}))

    def state(addr: str) -> str | None:
        try:  # the admin port may open a moment after the listeners the fixture waits for
            with urllib.request.urlopen(f"http://{HOST}:{admin_port}/api/pools", timeout=5) as resp:
                pools = json.loads(resp.read())["pools"]
        except OSError:
            return None
        return next(m["state"] for m in pools["chat"]["members"] if m["addr"] == addr)

    assert wait_until(lambda: state(b_addr) == "up", 10)
    b.kill()
    assert wait_until(lambda: state(b_addr) == "down", 10)

    async def main():
        nonlocal b
        held = []
        for _ in range(20):  # all on a while b is down
            held.append(await connect(f"{p.ws_url}/whoami", ping_interval=None))
        b = start_member("ws_echo.py", "b", tmp_path, extra_args=("--port", str(b_port)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while state(b_addr) != "slow_start" and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert state(b_addr) == "slow_start"
        names = []
        for _ in range(20):  # without slow start least_conn would send all 20 to b
            ws = await connect(f"{p.ws_url}/whoami", ping_interval=None)
            held.append(ws)
            names.append(await ws.recv())
        await asyncio.sleep(4.2)
        after = state(b_addr)
        for ws in held:
            await ws.close()
        return names, after

    try:
        names, after = run(main(), timeout=40)
    finally:
        b.kill()
    assert names.count("b") <= 6, names  # ramped from 1/16 of its weight
    assert names.count("b") >= 1  # but not left out
    assert after == "up"
