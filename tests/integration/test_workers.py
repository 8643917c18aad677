"""``workers = 2``: a master and two workers on SO_REUSEPORT sockets (issue #6).

- both workers take connections (the kernel spreads them over the slot sockets);
- the admin API counts the connections of every worker;
- max_conns holds per node, not per worker (the counts are in shared memory);
- a worker killed with SIGKILL is logged and replaced, its connections stop counting (no
  stuck counts: the member takes as many new connections as it lost), least_conn keeps
  balancing, and the master leaves no zombie behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support import HOST, run, site_conf, wait_until, children, state



def conns_by_process(pids: list[int], port: int) -> Counter:
    """Established TCP connections on the proxy's ``port`` held by each of ``pids``: socket
    inodes from /proc/PID/fd matched against /proc/net/tcp."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes[link[8:-1]] = pid
    out: Counter = Counter()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            out[inodes[fields[9]]] += 1
    return out


def workers_of(p, n: int = 2) -> list[int]:
    assert wait_until(lambda: len(children(p.proc.pid)) == n, 10), children(p.proc.pid)
    return children(p.proc.pid)


def admin_pools(port: int) -> dict:
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/pools", timeout=5) as resp:
        return json.loads(resp.read())


async def open_ws(url: str):
    return await connect(url, ping_interval=None, open_timeout=10, close_timeout=2)


async def whoami(url: str):
    """A WebSocket to /whoami: (connection, member name)."""
    ws = await open_ws(f"{url}/whoami")
    return ws, await asyncio.wait_for(ws.recv(), 5)


async def try_open(url: str):
    """A WebSocket, or the HTTP status that refused it."""
    try:
        return await open_ws(url)
    except InvalidStatus as exc:
        return exc.response.status_code


def test_both_workers_take_connections_and_counts_are_node_wide(members, proxy):
    m = members.ws("echo")
    server = {"workers": 2, "admin": f"{HOST}:$PORT2"}
    p = proxy(site_conf({"echo": [m.addr]}, server=server))
    workers = workers_of(p)
    result: dict = {}

    async def main():
        conns = [await open_ws(f"{p.ws_url}/c{i}") for i in range(40)]
        for ws in conns:
            await ws.send("x")
            assert await ws.recv() == "x"
        result["by_worker"] = conns_by_process(workers, p.port)
        port = int(p.config["server"]["admin"].rsplit(":", 1)[1])
        members_ = (await asyncio.to_thread(admin_pools, port))["pools"]["echo"]["members"]
        result["admin_conns"] = sum(x["conns"] for x in members_)
        for ws in conns:
            await ws.close()

    run(main())
    by_worker = result["by_worker"]
    assert sum(by_worker.values()) == 40, by_worker
    assert all(by_worker[w] >= 3 for w in workers), by_worker  # both take a fair part (P(fail) ~ 1e-8)
    assert result["admin_conns"] == 40


def test_max_conns_holds_per_node_not_per_worker(members, proxy):
    m = members.ws("echo")
    p = proxy(site_conf({"echo": {"members": [m.addr], "max_conns": 10, "queue": {"size": 0}}},
                        server={"workers": 2}))
    workers = workers_of(p)
    result: dict = {}

    async def main():
        outcomes = await asyncio.gather(*(try_open(f"{p.ws_url}/c{i}") for i in range(15)))
        opened = [o for o in outcomes if not isinstance(o, int)]
        result["statuses"] = sorted(o for o in outcomes if isinstance(o, int))
        result["opened"] = len(opened)
        result["by_worker"] = conns_by_process(workers, p.port)
        for ws in opened:
            await ws.close()

    run(main())
    assert result["opened"] == 10, result
    assert result["statuses"] == [503] * 5, result
    # Both workers held some of them: per-worker limits would have let all 15 through.
    assert len([w for w in workers if result["by_worker"][w] > 0]) == 2, result


def test_killed_worker_is_replaced_and_its_counts_vanish(members, proxy):
    """kill -9 a worker holding connections: the master logs it and forks a replacement;
    the member's max_conns counts only the live connections again (no stuck counts)."""
    m = members.ws("echo")
    p = proxy(site_conf({"echo": {"members": [m.addr], "max_conns": 10, "queue": {"size": 0}}},
                        server={"workers": 2}))
    workers = workers_of(p)
    result: dict = {}

    async def main():
        conns = []
        for i in range(10):
            conns.append(await open_ws(f"{p.ws_url}/c{i}"))
        by_worker = conns_by_process(workers, p.port)
        victim = max(workers, key=lambda w: by_worker[w])
        lost = by_worker[victim]
        assert lost > 0 and sum(by_worker.values()) == 10
        assert await try_open(f"{p.ws_url}/over") == 503  # full
        os.kill(victim, signal.SIGKILL)
        closed = 0
        for ws in conns:
            try:
                await asyncio.wait_for(ws.send("x"), 2)
                await asyncio.wait_for(ws.recv(), 2)
            except (ConnectionClosed, asyncio.TimeoutError):
                closed += 1
        result.update(victim=victim, lost=lost, closed=closed)
        replaced = await asyncio.to_thread(
            p.wait_log, lambda r: r.get("msg") == "worker restarted" and r.get("replaces") == victim, 10)
        result["replaced"] = replaced
        # The dead worker's connections no longer count: exactly that many fit again.
        fresh = [await try_open(f"{p.ws_url}/again{i}") for i in range(lost)]
        result["fresh_refused"] = [o for o in fresh if isinstance(o, int)]
        result["extra"] = await try_open(f"{p.ws_url}/extra")
        for ws in conns + fresh + [result["extra"]]:
            if not isinstance(ws, int):
                await ws.close()

    run(main())
    assert result["closed"] == result["lost"], result
    died = p.wait_log(lambda r: r.get("msg") == "worker died unexpectedly" and r.get("pid") == result["victim"], 5)
    assert died is not None and "SIGKILL" in died["status"], died
    assert result["replaced"] is not None, p.stderr_text()[-3000:]
    assert result["fresh_refused"] == [], result
    assert result["extra"] == 503, result
    now = children(p.proc.pid)
    assert len(now) == 2 and result["victim"] not in now
    assert all(state(pid) != "Z" for pid in now)
    assert state(result["victim"]) is None  # reaped, not a zombie


def test_least_conn_balances_across_workers_after_a_worker_dies(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(site_conf({"chat": {"members": [a.addr, b.addr], "balance": "least_conn"}}, server={"workers": 2}))
    workers = workers_of(p)
    result: dict = {}

    async def main():
        held = []
        for _ in range(20):  # one at a time: each pick sees the previous one's count
            held.append(await whoami(p.ws_url))
        result["before"] = Counter(name for _, name in held)
        by_worker = conns_by_process(workers, p.port)
        victim = max(workers, key=lambda w: by_worker[w])
        os.kill(victim, signal.SIGKILL)
        alive_ = []
        for ws, name in held:
            try:
                await ws.send("x")
                await asyncio.wait_for(ws.recv(), 2)
                alive_.append((ws, name))
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
        result["after_kill"] = Counter(name for _, name in alive_)
        await asyncio.to_thread(p.wait_log, lambda r: r.get("msg") == "worker restarted", 10)
        while len(alive_) < 20:
            alive_.append(await whoami(p.ws_url))
        result["refilled"] = Counter(name for _, name in alive_)
        for ws, _ in alive_:
            await ws.close()

    run(main())
    before, refilled = result["before"], result["refilled"]
    assert abs(before["a"] - before["b"]) <= 2, result
    # Whatever the dead worker held, the new connections fill the emptier member first.
    assert abs(refilled["a"] - refilled["b"]) <= 2, result
