"""The admin HTTP server and API routing, over real sockets, against a recording fake control.

Only routing and parsing are tested here (the fake stands in for the ControlPlane so each
route's arguments can be checked); tests/integration/test_admin.py runs the real thing.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from wsproxy.admin import AdminServer
from wsproxy.admin.client import AdminClient, AdminError, base_url, format_status, member_path
from wsproxy.cli import main as cli_main
from wsproxy.config import parse_config
from wsproxy.config.schema import Address
from wsproxy.node.metrics import Metrics
from wsproxy.node.table import NodeTable

STATUS = {
    "generation": 4,
    "pools": {
        "chat": {"balance": "least_conn", "health_check": "ws", "rebalance": None, "members": [
            {"addr": "127.0.0.1:9001", "state": "up", "conns": 12, "weight": 1, "health": "up", "rtt_ms": 0.4},
            {"addr": "[::1]:9002", "state": "draining", "conns": 3, "weight": 2, "health": "up", "rtt_ms": None},
        ]},
    },
}


class FakeControl:
    """Records calls; raises like the ControlPlane for unknown names and bad values."""

    generation = 4

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _check(self, pool: str, addr: str | None = None) -> None:
        if pool not in STATUS["pools"]:
            raise KeyError(f"no pool named {pool!r}")
        if addr is not None and addr not in [m["addr"] for m in STATUS["pools"][pool]["members"]]:
            raise KeyError(f"pool {pool!r} has no member {addr!r}")

    def status(self) -> dict:
        return STATUS

    def drain(self, pool, addr, spread=None):
        self._check(pool, addr)
        self.calls.append(("drain", pool, addr, spread))
        return {"pool": pool, "member": addr, "state": "draining", "conns": 3, "spread_s": spread}

    def enable(self, pool, addr):
        self._check(pool, addr)
        self.calls.append(("enable", pool, addr))
        return {"pool": pool, "member": addr, "state": "up"}

    def set_weight(self, pool, addr, weight):
        self._check(pool, addr)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1000:
            raise ValueError("weight must be an integer from 0 to 1000")
        self.calls.append(("weight", pool, addr, weight))
        return {"pool": pool, "member": addr, "weight": weight}

    async def rebalance(self, pool):  # an async action works too
        self._check(pool)
        self.calls.append(("rebalance", pool))
        return {"pool": pool, "conns": 15, "closes_planned": 4, "rate_per_s": 10.0, "threshold": 0.2}


async def _read_response(reader: asyncio.StreamReader, head_only: bool = False):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    body = b"" if head_only else await reader.readexactly(length)
    return status, headers, body


class Admin:
    """An AdminServer on a free loopback port and a way to talk to it."""

    def __init__(self, control, metrics=None) -> None:
        self.server = AdminServer(Address("127.0.0.1", 0), control, metrics)

    async def __aenter__(self):
        await self.server.start()
        self.port = self.server.port
        return self

    async def __aexit__(self, *exc):
        await self.server.stop()

    async def raw(self, data: bytes, head_only: bool = False):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            return await _read_response(reader, head_only)
        finally:
            writer.close()

    async def request(self, method: str, path: str, body: bytes | None = None):
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        status, headers, data = await self.raw(head.encode() + b"\r\n" + (body or b""), head_only=method == "HEAD")
        return status, headers, data


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_routes_of_the_contract():
    control = FakeControl()

    async def main():
        async with Admin(control) as admin:
            status, headers, body = await admin.request("GET", "/api/pools")
            assert status == 200 and headers["content-type"] == "application/json"
            assert json.loads(body) == STATUS
            status, _, body = await admin.request("GET", "/api/pools/chat")
            assert status == 200 and json.loads(body)["members"][0]["conns"] == 12
            status, _, body = await admin.request("GET", "/api/pools/chat/members/%5B%3A%3A1%5D%3A9002")
            assert status == 200 and json.loads(body)["state"] == "draining"
            status, _, body = await admin.request("POST", "/api/pools/chat/members/127.0.0.1:9001/drain")
            assert status == 200 and json.loads(body)["state"] == "draining"
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/127.0.0.1:9001/drain?spread=2.5s")
            assert status == 200
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/127.0.0.1:9001/drain",
                                               b'{"spread": "250ms"}')
            assert status == 200
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/127.0.0.1:9001/drain",
                                               b'{"spread": 3}')
            assert status == 200
            # IPv6 members, percent-encoded (what ctl sends) or written as is
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/%5B%3A%3A1%5D%3A9002/enable")
            assert status == 200
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/[::1]:9002/weight?weight=5")
            assert status == 200
            status, _, _ = await admin.request("POST", "/api/pools/chat/members/127.0.0.1:9001/weight",
                                               b'{"weight": 0}')
            assert status == 200
            status, _, body = await admin.request("POST", "/api/pools/chat/rebalance")
            assert status == 200 and json.loads(body)["closes_planned"] == 4

    run(main())
    assert control.calls == [
        ("drain", "chat", "127.0.0.1:9001", None),
        ("drain", "chat", "127.0.0.1:9001", 2.5),
        ("drain", "chat", "127.0.0.1:9001", 0.25),
        ("drain", "chat", "127.0.0.1:9001", 3.0),
        ("enable", "chat", "[::1]:9002"),
        ("weight", "chat", "[::1]:9002", 5),
        ("weight", "chat", "127.0.0.1:9001", 0),
        ("rebalance", "chat"),
    ]


@pytest.mark.parametrize("method, path, body, status, needle", [
    ("GET", "/api/pools/nope", None, 404, "no pool named 'nope'"),
    ("POST", "/api/pools/nope/rebalance", None, 404, "no pool named 'nope'"),
    ("POST", "/api/pools/chat/members/10.9.9.9:1/drain", None, 404, "has no member '10.9.9.9:1'"),
    ("GET", "/api/pools/chat/members/10.9.9.9:1", None, 404, "has no member"),
    ("GET", "/nothing/here", None, 404, "no such path"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/explode", None, 404, "no such path"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/weight", None, 400, "weight is missing"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/weight?weight=abc", None, 400, "must be an integer"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/weight", b'{"weight": 5000}', 400, "from 0 to 1000"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/weight", b'{"weight": true}', 400, "from 0 to 1000"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/drain", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/drain", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/drain?spread=soon", None, 400, "spread"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/drain?spread=-1", None, 400, "zero or more"),
    ("POST", "/api/pools/chat/members/127.0.0.1:9001/drain", b'{"spread": "nan"}', 400, "spread"),
])
def test_errors_name_what_is_wrong(method, path, body, status, needle):
    control = FakeControl()

    async def main():
        async with Admin(control) as admin:
            return await admin.request(method, path, body)

    got, headers, data = run(main())
    assert got == status
    assert headers["content-type"] == "application/json"
    assert needle in json.loads(data)["error"]
    assert control.calls == []


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/api/pools", "GET, HEAD"),
    ("DELETE", "/api/pools/chat", "GET, HEAD"),
    ("GET", "/api/pools/chat/members/127.0.0.1:9001/drain", "POST"),
    ("PUT", "/api/pools/chat/rebalance", "POST"),
    ("POST", "/metrics", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(method, path, allow):
    control = FakeControl()

    async def main():
        async with Admin(control) as admin:
            return await admin.request(method, path, b"" if method in ("POST", "PUT") else None)

    status, headers, body = run(main())
    assert status == 405
    assert headers["allow"] == allow
    assert control.calls == []


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /api/pools HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET /api/pools HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET /api/pools HTTP/3.0\r\nHost: localhost\r\n\r\n", 400),
    (b"GET /api/pools HTTP/1.1\nHost: localhost\n\n", 400),  # bare LF
    (b"POST /api/pools/chat/rebalance HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999999\r\n\r\n", 413),
    (b"GET " + b"/x" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
])
def test_malformed_requests(raw, status):
    async def main():
        async with Admin(FakeControl()) as admin:
            return await admin.raw(raw)

    got, headers, body = run(main())
    assert got == status
    assert headers.get("connection") == "close"


def test_keep_alive_head_and_pipelining():
    async def main():
        async with Admin(FakeControl()) as admin:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
            writer.write(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\n\r\n"
                         b"HEAD /api/pools HTTP/1.1\r\nHost: localhost\r\n\r\n")
            first = await _read_response(reader)
            second = await _read_response(reader, head_only=True)
            writer.write(b"GET /api/pools/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            third = await _read_response(reader)
            rest = await reader.read()
            writer.close()
            return first, second, third, rest

    first, second, third, rest = run(main())
    assert first[0] == 200
    status = json.loads(first[2])
    assert status["generation"] == 4 and status["pid"] > 0 and "uptime_s" in status
    assert second[0] == 200 and int(second[1]["content-length"]) > 0 and second[2] == b""
    assert third[0] == 200 and third[1]["connection"] == "close"
    assert rest == b""  # closed after the Connection: close


def test_metrics_page_and_stats_page():
    conf = parse_config({"listeners": {"public": {"bind": "127.0.0.1:8080", "routes": [{"pool": "chat"}]}},
                         "pools": {"chat": {"members": ["127.0.0.1:9001"]}}})
    metrics = Metrics(NodeTable(rows=2, members=8, counters=512))
    metrics.register(conf)
    metrics.connection_opened("public")

    async def main():
        async with Admin(FakeControl(), metrics) as admin:
            m = await admin.request("GET", "/metrics")
            page = await admin.request("GET", "/")
            no_metrics = None
            async with Admin(FakeControl()) as bare:
                no_metrics = await bare.request("GET", "/metrics")
            return m, page, no_metrics

    m, page, no_metrics = run(main())
    assert m[0] == 200 and m[1]["content-type"].startswith("text/plain; version=0.0.4")
    text = m[2].decode()
    assert 'wsproxy_connections_total{listener="public"} 1\n' in text
    assert "wsproxy_config_generation 4\n" in text  # the control's generation
    assert page[0] == 200 and page[1]["content-type"].startswith("text/html")
    assert b"/api/pools" in page[2] and b"<script" in page[2]
    assert b"src=" not in page[2] and b"http://" not in page[2] and b"https://" not in page[2]  # no external assets
    assert no_metrics[0] == 404


def test_slow_or_idle_clients_are_closed(monkeypatch):
    from wsproxy.admin import server as server_mod

    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT", 0.2)
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT", 0.2)

    async def main():
        async with Admin(FakeControl()) as admin:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
            writer.write(b"GET /api/pools HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            status, _, _ = await asyncio.wait_for(_read_response(reader), 5)
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
            idle = await asyncio.wait_for(reader.read(), 5)  # closed quietly
            writer.close()
            return status, idle

    status, idle = run(main())
    assert status == 408
    assert idle == b""


# -- the ctl client ------------------------------------------------------------------------------

def test_base_url_and_paths():
    assert base_url("127.0.0.1:9901") == "http://127.0.0.1:9901"
    assert base_url("[::1]:9901") == "http://[::1]:9901"
    assert base_url("::1:9901") == "http://[::1]:9901"
    assert base_url("http://example:1/") == "http://example:1"
    with pytest.raises(AdminError, match="HOST:PORT"):
        base_url("localhost")
    assert member_path("chat", "[::1]:9002", "drain") == "/api/pools/chat/members/%5B%3A%3A1%5D%3A9002/drain"


def test_format_status_is_a_table():
    text = format_status(STATUS)
    lines = text.splitlines()
    assert lines[0] == "config generation 4"
    assert "pool chat (least_conn, health check ws)" in lines
    header = next(line for line in lines if "MEMBER" in line)
    assert header.split() == ["MEMBER", "STATE", "CONNS", "WEIGHT", "HEALTH", "RTT"]
    row = next(line for line in lines if "[::1]:9002" in line)
    assert row.split() == ["[::1]:9002", "draining", "3", "2", "up", "-"]
    assert "0.4 ms" in text


def test_ctl_commands_against_the_server():
    """click's runner in a thread, the server on this loop: every ctl command's request."""
    control = FakeControl()
    runner = CliRunner()

    async def main():
        async with Admin(control) as admin:
            addr = f"127.0.0.1:{admin.port}"
            loop = asyncio.get_running_loop()

            def ctl(*args):
                return runner.invoke(cli_main, ["ctl", "--admin", addr, *args])

            results = {}
            for name, args in {
                "status": ("status",),
                "status_json": ("status", "--json"),
                "drain": ("drain", "chat", "127.0.0.1:9001", "--spread", "10s"),
                "enable": ("enable", "chat", "[::1]:9002"),
                "weight": ("weight", "chat", "127.0.0.1:9001", "3"),
                "rebalance": ("rebalance", "chat"),
                "unknown": ("drain", "chat", "10.0.0.9:1"),
                "bad_weight": ("weight", "chat", "127.0.0.1:9001", "5000"),
            }.items():
                results[name] = await loop.run_in_executor(None, ctl, *args)
            return results

    r = run(main())
    assert r["status"].exit_code == 0 and "127.0.0.1:9001" in r["status"].output
    assert "MEMBER" in r["status"].output
    assert json.loads(r["status_json"].output) == STATUS
    assert r["drain"].exit_code == 0 and "draining" in r["drain"].output
    assert r["enable"].exit_code == 0
    assert r["weight"].exit_code == 0 and "weight 3" in r["weight"].output
    assert r["rebalance"].exit_code == 0 and "4 close(s) planned" in r["rebalance"].output
    assert r["unknown"].exit_code == 1 and "404" in r["unknown"].output and "10.0.0.9:1" in r["unknown"].output
    assert r["bad_weight"].exit_code == 1 and "400" in r["bad_weight"].output
    assert control.calls == [
        ("drain", "chat", "127.0.0.1:9001", 10.0),
        ("enable", "chat", "[::1]:9002"),
        ("weight", "chat", "127.0.0.1:9001", 3),
        ("rebalance", "chat"),
    ]


def test_ctl_unreachable_admin():
    from tests.integration.support import closed_port

    result = CliRunner().invoke(cli_main, ["ctl", "--admin", f"127.0.0.1:{closed_port()}", "status"])
    assert result.exit_code == 1
    assert "cannot reach the admin API" in result.output
    with pytest.raises(AdminError, match="cannot reach"):
        AdminClient(f"127.0.0.1:{closed_port()}", timeout=2).call("GET", "/api/pools")


@pytest.mark.parametrize("raw, status", [
    # a page elsewhere POSTing to the loopback admin (CSRF): refused, nothing drained
    (b"POST /api/pools/chat/members/127.0.0.1:9001/drain HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n"
     b"Origin: https://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\n"
     b"Content-Length: 0\r\n\r\n", 403),
    # DNS rebinding: the attacker's name pointing at 127.0.0.1
    (b"GET /api/pools HTTP/1.1\r\nHost: evil.example:9901\r\n\r\n", 403),
    (b"POST /api/pools/chat/rebalance HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n", 403),
    # the stats page itself (same origin), and tools that send no Origin
    (b"POST /api/pools/chat/rebalance HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n"
     b"Origin: http://127.0.0.1:9901\r\nContent-Length: 0\r\n\r\n", 200),
    (b"POST /api/pools/chat/rebalance HTTP/1.1\r\nHost: localhost:9901\r\nContent-Length: 0\r\n\r\n", 200),
])
def test_requests_a_web_page_could_forge_are_refused(raw, status):
    async def main():
        control = FakeControl()
        async with Admin(control) as admin:
            got, _, body = await admin.raw(raw)
        return got, body, control

    got, body, control = run(main())
    assert got == status, body
    if status == 403:
        assert not [c for c in control.calls if c[0] in ("drain", "rebalance")]
