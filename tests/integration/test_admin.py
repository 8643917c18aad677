"""The admin API, /metrics and ``wsproxy ctl`` on a running proxy with real members and clients.

The proxy runs with ``server.admin`` on a free loopback port; its ControlPlane is the real
one. Every check reads what outside tools read: the JSON of CONFIG.md's contract, the
Prometheus text, and the ctl command's output and exit code.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed

from .support import (HOST, REPO, base_env, closed_port, port_open, raw_request, run, site_conf, wait_until,
                      ws_handshake_request, ws_key)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy from the env


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("compression", None)  # byte counts below are exact: no permessage-deflate
    return _ws_connect(url, **kw)


def admin_conf(pools: dict, **kw) -> str:
    server = {"admin": f"{HOST}:$PORT9", **kw.pop("server", {})}
    return site_conf(pools, server=server, **kw)


def admin_port(p) -> int:
    port = int(p.config["server"]["admin"].rsplit(":", 1)[1])
    assert wait_until(lambda: port_open(port), 10), p.stderr_text()[-3000:]
    return port


def call(port: int, method: str, path: str, body: dict | bytes | None = None):
    """(status, headers, parsed JSON or text) of one admin request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    if method == "POST" and data is None:
        data = b""
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method)
    try:
        with _OPENER.open(request, timeout=10) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, headers, json.loads(raw)
    return status, headers, raw.decode()


def pools(port: int) -> dict:
    status, _, body = call(port, "GET", "/api/pools")
    assert status == 200
    return body


def members_of(port: int, pool: str) -> dict[str, dict]:
    return {m["addr"]: m for m in pools(port)["pools"][pool]["members"]}


_SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def metrics(port: int) -> dict[tuple, float]:
    """{(name, ((label, value), ...)): value} from GET /metrics."""
    status, headers, text = call(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(snapshot: dict, name: str, **labels) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def ctl(port: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsproxy", "ctl", "--admin", f"{HOST}:{port}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=base_env())


async def echo_session(url: str, messages: list[str]) -> None:
    async with ws_connect(url) as ws:
        for text in messages:
            await ws.send(text)
            assert await ws.recv() == text


# --------------------------------------------------------------------------- /api/pools


def test_pools_shape_and_conns_follow_real_websockets(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(admin_conf({"chat": {"balance": "least_conn", "members": [a.addr, b.addr]}}))
    port = admin_port(p)
    body = pools(port)
    # CONFIG.md: {"pools": {"chat": {"balance": ..., "members": [{"addr", "state", "conns", "weight"}]}}}
    assert set(body) >= {"pools"} and list(body["pools"]) == ["chat"]
    chat = body["pools"]["chat"]
    assert chat["balance"] == "least_conn"
    assert [m["addr"] for m in chat["members"]] == [a.addr, b.addr]
    for m in chat["members"]:
        assert {"addr", "state", "conns", "weight"} <= set(m)
        assert m["state"] == "up" and m["conns"] == 0 and m["weight"] == 1
        assert isinstance(m["conns"], int) and isinstance(m["weight"], int)
    assert isinstance(body.get("generation"), int)

    async def main():
        clients = [await ws_connect(p.ws_url + "/hold").__aenter__() for _ in range(4)]
        for ws in clients:  # each upgrade is through; the relays are up
            await ws.send("x")
            assert await ws.recv() == "x"
        held = await asyncio.to_thread(members_of, port, "chat")
        for ws in clients:
            await ws.close()
        return held

    held = run(main())
    assert held[a.addr]["conns"] == 2 and held[b.addr]["conns"] == 2  # least_conn, counted node-wide
    assert wait_until(lambda: all(m["conns"] == 0 for m in members_of(port, "chat").values()), 5)
    # one pool and one member of it
    status, _, one = call(port, "GET", "/api/pools/chat")
    assert status == 200 and one["balance"] == "least_conn" and len(one["members"]) == 2
    status, _, member = call(port, "GET", f"/api/pools/chat/members/{a.addr}")
    assert status == 200 and member["addr"] == a.addr and member["state"] == "up"
    status, _, info = call(port, "GET", "/api/status")
    assert status == 200 and info["generation"] == body["generation"] and info["pid"] > 0
    status, headers, page = call(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "/api/pools" in page


# --------------------------------------------------------------------------- /metrics


L = 20  # bytes per echo message


def test_metrics_move_with_real_traffic(members, proxy):
    a = members.ws("a")
    dead = closed_port()
    p = proxy(admin_conf(
        {"chat": {"members": [a.addr]}, "dead": {"members": [f"{HOST}:{dead}"], "retries": 0}},
        routes=[{"path_prefix": "/dead/", "pool": "dead"}, {"pool": "chat"}]))
    port = admin_port(p)
    before = metrics(port)
    chat_a = {"pool": "chat", "member": a.addr}
    assert value(before, "wsproxy_member_up", **chat_a) == 1
    assert value(before, "wsproxy_member_connections", **chat_a) == 0

    # three echo sessions, five messages each, closed by the client with 1000
    async def three():
        await asyncio.gather(*(echo_session(p.ws_url + f"/s{i}", ["m" * L] * 5) for i in range(3)))

    run(three())

    def settled():
        snap = metrics(port)
        return snap if value(snap, "wsproxy_websocket_sessions_active", **chat_a) == 0 and \
            delta(snap, before, "wsproxy_websocket_closes_total", code="1000", closed_by="client") == 3 else None

    after = wait_until(settled, 5)
    assert after, metrics(port)
    assert delta(after, before, "wsproxy_connections_total", listener="public") == 3
    assert value(after, "wsproxy_connections_active", listener="public") == 0
    assert delta(after, before, "wsproxy_websocket_handshakes_total", listener="public", result="101") == 3
    assert delta(after, before, "wsproxy_websocket_sessions_total", **chat_a) == 3
    assert delta(after, before, "wsproxy_member_connections_total", **chat_a) == 3
    # per session: 5 data frames + the Close, each way
    assert delta(after, before, "wsproxy_websocket_frames_total", pool="chat", direction="in") == 18
    assert delta(after, before, "wsproxy_websocket_frames_total", pool="chat", direction="out") == 18
    # client frames are masked (6-byte header); the Closes carry code 1000 (2 bytes)
    assert delta(after, before, "wsproxy_websocket_bytes_total", pool="chat", direction="in") == 3 * (5 * (6 + L) + 8)
    assert delta(after, before, "wsproxy_websocket_bytes_total", pool="chat", direction="out") == 3 * (5 * (2 + L) + 4)

    # refused handshakes, a member that closes with its own code, a dead pool, plain HTTP
    assert raw_request(p.port, ws_handshake_request("/nokey", key=None)).status == 400
    assert raw_request(p.port, ws_handshake_request("/dead/x", key=ws_key())).status in (502, 503)

    async def member_closes():
        async with ws_connect(p.ws_url + "/close?code=4001&reason=bye") as ws:
            await ws.send("hi")
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            return ws.close_code

    assert run(member_closes()) == 4001
    assert raw_request(p.port, b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 200
    more = wait_until(lambda: (lambda s: s if value(s, "wsproxy_connections_active", listener="public") == 0
                               and delta(s, after, "wsproxy_websocket_closes_total", code="other",
                                         closed_by="member") == 1 else None)(metrics(port)), 5)
    assert more, metrics(port)
    assert delta(more, after, "wsproxy_connections_total", listener="public") == 4
    assert delta(more, after, "wsproxy_websocket_handshakes_total", listener="public", result="4xx") == 1
    assert delta(more, after, "wsproxy_websocket_handshakes_total", listener="public", result="member_failed") == 1
    assert delta(more, after, "wsproxy_websocket_handshakes_total", listener="public", result="101") == 1
    assert delta(more, after, "wsproxy_member_connections_total", **chat_a) == 2  # the upgrade and the GET
    assert delta(more, after, "wsproxy_member_connections_total", pool="dead", member=f"{HOST}:{dead}") == 0
    assert value(more, "wsproxy_config_generation") >= 1


def test_member_lost_is_counted_as_1006_from_the_member(members, proxy):
    a = members.ws("a")
    p = proxy(admin_conf({"chat": [a.addr]}))
    port = admin_port(p)
    before = metrics(port)

    async def main():
        async with ws_connect(p.ws_url + "/x") as ws:
            await ws.send("x")
            await ws.recv()
            a.kill()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code

    assert run(main()) == 1014  # what the client saw; the first close was the member's going away
    after = wait_until(lambda: (lambda s: s if delta(s, before, "wsproxy_websocket_closes_total", code="1006",
                                                     closed_by="member") == 1 else None)(metrics(port)), 5)
    assert after, metrics(port)


PLUGIN_LUA = """
local P = { name = "boom" }
function P.HTTP_REQUEST(ctx, req)
  error("boom on purpose")
end
return P
"""


def test_plugin_errors_are_counted(members, proxy, tmp_path):
    a = members.ws("a")
    plugin = tmp_path / "boom.lua"
    plugin.write_text(textwrap.dedent(PLUGIN_LUA))
    conf = admin_conf({"chat": [a.addr]}) + f'\n[[plugins]]\npath = "{plugin}"\non_error = "continue"\n'
    p = proxy(conf)
    port = admin_port(p)
    for _ in range(2):
        assert raw_request(p.port, b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").status == 200
    snap = wait_until(lambda: (lambda s: s if value(s, "wsproxy_plugin_errors_total", plugin="0",
                                                    path=str(plugin)) == 2 else None)(metrics(port)), 5)
    assert snap, metrics(port)


# --------------------------------------------------------------------------- actions


def test_actions_over_http_change_member_state(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(admin_conf({"chat": {"balance": "least_conn", "members": [a.addr, b.addr]}}))
    port = admin_port(p)
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{a.addr}/drain", {"spread": "0s"})
    assert status == 200, body
    assert members_of(port, "chat")[a.addr]["state"] == "draining"
    assert value(metrics(port), "wsproxy_member_draining", pool="chat", member=a.addr) == 1

    async def who():  # new connections avoid the drained member
        names = []
        for _ in range(3):
            async with ws_connect(p.ws_url + "/whoami") as ws:
                names.append(await ws.recv())
        return names

    assert run(who()) == ["b", "b", "b"]
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{a.addr}/enable")
    assert status == 200
    assert members_of(port, "chat")[a.addr]["state"] == "up"
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{b.addr}/weight?weight=3")
    assert status == 200
    assert members_of(port, "chat")[b.addr]["weight"] == 3
    assert value(metrics(port), "wsproxy_member_weight", pool="chat", member=b.addr) == 3
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{b.addr}/weight", {"weight": 1})
    assert status == 200 and members_of(port, "chat")[b.addr]["weight"] == 1
    status, _, body = call(port, "POST", "/api/pools/chat/rebalance")
    assert status == 200 and body["pool"] == "chat" and "closes_planned" in body


def test_error_answers_of_the_real_control_plane(members, proxy):
    a = members.ws("a")
    p = proxy(admin_conf({"chat": [a.addr]}))
    port = admin_port(p)
    status, _, body = call(port, "POST", f"/api/pools/nope/members/{a.addr}/drain")
    assert status == 404 and "nope" in body["error"]
    status, _, body = call(port, "POST", "/api/pools/chat/members/10.9.9.9:1/enable")
    assert status == 404 and "10.9.9.9:1" in body["error"]
    status, _, body = call(port, "POST", "/api/pools/nope/rebalance")
    assert status == 404 and "nope" in body["error"]
    status, _, body = call(port, "GET", "/api/pools/nope")
    assert status == 404
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{a.addr}/weight", {"weight": -1})
    assert status == 400 and "weight" in body["error"]
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{a.addr}/weight?weight=abc")
    assert status == 400
    status, _, body = call(port, "POST", f"/api/pools/chat/members/{a.addr}/drain", b"{oops")
    assert status == 400
    status, headers, body = call(port, "GET", f"/api/pools/chat/members/{a.addr}/drain")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, body = call(port, "DELETE", "/api/pools")
    assert status == 405 and "GET" in headers["Allow"]
    status, _, body = call(port, "GET", "/api/nothing")
    assert status == 404
    assert raw_request(port, b"NOT HTTP AT ALL\r\n\r\n").status == 400
    assert members_of(port, "chat")[a.addr]["state"] == "up"  # none of it changed anything


def test_drain_closes_websockets_with_1012_spread_and_counted(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(admin_conf({"chat": {"balance": "least_conn", "members": [a.addr, b.addr]}}))
    port = admin_port(p)

    async def main():
        clients = []
        for _ in range(4):
            ws = await ws_connect(p.ws_url + "/whoami").__aenter__()
            clients.append((await ws.recv(), ws))
        on_a = [ws for name, ws in clients if name == "a"]
        on_b = [ws for name, ws in clients if name == "b"]
        assert len(on_a) == 2 and len(on_b) == 2
        started = time.monotonic()
        status, _, body = await asyncio.to_thread(call, port, "POST", f"/api/pools/chat/members/{a.addr}/drain",
                                                  {"spread": "1s"})
        assert status == 200 and body["conns"] == 2
        codes = []
        for ws in on_a:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            codes.append(ws.close_code)
        elapsed = time.monotonic() - started
        for ws in on_b:  # the other member's clients stay
            await ws.send("still")
            assert await ws.recv() == "still"
            await ws.close()
        return codes, elapsed

    codes, elapsed = run(main())
    assert codes == [1012, 1012]
    assert elapsed < 8
    snap = wait_until(lambda: (lambda s: s if value(s, "wsproxy_drain_closes_total", pool="chat",
                                                    member=a.addr) == 2 else None)(metrics(port)), 5)
    assert snap, metrics(port)
    assert value(snap, "wsproxy_websocket_closes_total", code="1012", closed_by="proxy") == 2


def test_wsproxy_ctl_against_the_running_proxy(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(admin_conf({"chat": {"balance": "least_conn", "members": [a.addr, b.addr]}}))
    port = admin_port(p)
    out = ctl(port, "status")
    assert out.returncode == 0, out.stderr
    assert "pool chat (least_conn)" in out.stdout and a.addr in out.stdout and "MEMBER" in out.stdout
    out = ctl(port, "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["pools"]["chat"]["members"][0]["addr"] == a.addr
    out = ctl(port, "drain", "chat", a.addr, "--spread", "0s")
    assert out.returncode == 0, out.stderr
    assert members_of(port, "chat")[a.addr]["state"] == "draining"
    assert "draining" in ctl(port, "status").stdout
    out = ctl(port, "enable", "chat", a.addr)
    assert out.returncode == 0, out.stderr
    assert members_of(port, "chat")[a.addr]["state"] == "up"
    out = ctl(port, "weight", "chat", b.addr, "4")
    assert out.returncode == 0, out.stderr
    assert members_of(port, "chat")[b.addr]["weight"] == 4
    out = ctl(port, "rebalance", "chat")
    assert out.returncode == 0 and "close(s) planned" in out.stdout, out.stderr
    out = ctl(port, "drain", "nope", a.addr)
    assert out.returncode == 1 and "404" in out.stderr and "nope" in out.stderr
    out = ctl(port, "weight", "chat", b.addr, "5000")
    assert out.returncode == 1 and "400" in out.stderr
    out = subprocess.run([sys.executable, "-m", "wsproxy", "ctl", "--admin", f"{HOST}:{closed_port()}", "status"],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO), env=base_env())
    assert out.returncode == 1 and "cannot reach the admin API" in out.stderr


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc: its socket inodes in LISTEN)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_admin_is_off_unless_configured(members, proxy):
    a = members.ws("a")
    p = proxy(site_conf({"chat": [a.addr]}, server={"grace": "1s"}))
    assert listening_ports(p.proc.pid) == {p.port}
    q = proxy(admin_conf({"chat": [a.addr]}))
    # the check sees the admin port (which may open a moment after the listeners)
    assert wait_until(lambda: listening_ports(q.proc.pid) == {q.port, admin_port(q)}, 5), listening_ports(q.proc.pid)


@pytest.mark.slow
def test_conns_and_metrics_count_across_workers(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(admin_conf({"chat": {"balance": "least_conn", "members": [a.addr, b.addr]}},
                         server={"workers": 2}))
    port = admin_port(p)
    before = metrics(port)

    async def main():
        clients = [await ws_connect(p.ws_url + "/hold").__aenter__() for _ in range(6)]
        for ws in clients:
            await ws.send("x")
            assert await ws.recv() == "x"
        held = await asyncio.to_thread(lambda: wait_until(
            lambda: (lambda m: m if sum(x["conns"] for x in m.values()) == 6 else None)(members_of(port, "chat")), 5))
        counted = await asyncio.to_thread(lambda: wait_until(
            lambda: (lambda s: s if value(s, "wsproxy_connections_active", listener="public") == 6 else None)(
                metrics(port)), 5))
        for ws in clients:
            await ws.close()
        return held, counted

    held, counted = run(main())
    assert held and held[a.addr]["conns"] == 3 and held[b.addr]["conns"] == 3
    assert counted, metrics(port)
    assert delta(counted, before, "wsproxy_websocket_handshakes_total", listener="public", result="101") == 6
    assert value(counted, "wsproxy_worker_processes") == 2
