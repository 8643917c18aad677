"""SIGHUP reloads (issue #6), with one process and with a master and two workers.

The storm: 500 WebSockets with continuous echo traffic, then 20 reloads in a row, some of
which change the config (a pool member added, the route moved to another pool), and a bad
config in the middle. Then:
- zero messages lost (every message echoed, in order), zero unexpected closes: no
  connection closes before its generation's drain_timeout is over;
- every connection opened after a reload sees that reload's config, and the bad config is
  logged with its key path while the previous one keeps serving;
- once drain_timeout (+ close_spread) has passed, every old generation's WebSocket got
  Close 1001, every old generation is logged as ended, and (workers = 2) only the master
  and two workers are left, none a zombie.
Smaller tests: listeners added and removed by a reload, plugin shared state kept across a
reload, and a reload that cannot bind keeps the old config.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .support import (HOST, connect as raw_connect, free_port, port_open, raw_request, read_response, run, site_conf,
                      wait_until, children, state)

CLIENTS = 500
RELOADS = 20
INTERVAL = 0.3  # seconds between one client's messages
SPREAD = 1.0


class Site:
    """The config file a running proxy reads on SIGHUP, in its variants."""

    def __init__(self, p, a, b, c, server: dict) -> None:
        self.p, self.a, self.b, self.c, self.server = p, a, b, c, server

    def text(self, variant: str) -> str:
        p1 = [self.a.addr, self.b.addr] if variant == "ab" else [self.a.addr]
        route = "p2" if variant == "c" else "p1"
        conf = site_conf({"p1": {"members": p1, "balance": "round_robin"}, "p2": [self.c.addr]},
                         routes=[{"pool": route}], server=self.server)
        return conf.replace("$PORT", str(self.p.port))

    @staticmethod
    def allowed(variant: str) -> set[str]:
        return {"ab": {"a", "b"}, "a": {"a"}, "c": {"c"}}[variant]

    def write(self, text: str) -> None:
        tmp = self.p.conf_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.p.conf_path)  # a reload never reads a half-written file


def serving(p) -> bool:
    """The proxy logged that it serves (with workers: every worker of the first generation is up)."""
    return p.wait_log(lambda r: r.get("msg", "").startswith("wsproxy ") and r["msg"].endswith(" ready"), 10) is not None


def sighup(p) -> None:
    os.kill(p.proc.pid, signal.SIGHUP)


def reloaded(p, generation: int, timeout: float = 20.0) -> dict | None:
    return p.wait_log(lambda r: r.get("msg", "").startswith("reloaded") and r.get("generation") == generation,
                      timeout)


class Echo:
    """One client: /whoami tells its member; then a message every INTERVAL, each awaited
    before the next, until told to stop; then it waits for the proxy's Close."""

    def __init__(self, url: str, generation: int) -> None:
        self.url, self.generation = url, generation
        self.member: str | None = None
        self.sent = self.echoed = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.ws = None

    def _closed(self, rcvd) -> None:
        self.closed_at = time.time()
        self.close_code = rcvd.code if rcvd is not None else None

    async def open(self) -> None:
        self.ws = await connect(f"{self.url}/whoami", ping_interval=None, open_timeout=30, close_timeout=5)
        self.member = await asyncio.wait_for(self.ws.recv(), 10)

    async def run(self, stop: asyncio.Event) -> None:
        ws = self.ws
        seq = 0
        try:
            await asyncio.sleep(INTERVAL * (hash(id(self)) % 100) / 100)
            while not stop.is_set():
                message = f"{id(self)}:{seq}"
                await ws.send(message)
                self.sent += 1
                reply = await asyncio.wait_for(ws.recv(), 15)
                if reply != message:
                    self.errors.append(f"sent {message!r}, got {reply!r}")
                    return
                self.echoed += 1
                seq += 1
                await asyncio.sleep(INTERVAL)
            await ws.wait_closed()  # (without reading: the test may still talk on this one)
            self._closed(ws.protocol.close_rcvd)
        except ConnectionClosed as exc:
            self._closed(exc.rcvd)
        except asyncio.TimeoutError:
            self.errors.append(f"no echo within 15 s (message {seq})")
        except asyncio.CancelledError:
            pass


async def probe(port: int, stop: asyncio.Event, results: list) -> None:
    """New HTTP connections one after another while the storm goes on: none may be refused,
    reset or left unanswered (a listener's socket outlives every switch)."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            results.append(answer.split(b"\r\n", 1)[0])
        except (OSError, asyncio.TimeoutError) as exc:
            results.append(repr(exc).encode())
        await asyncio.sleep(0.01)


async def open_many(url: str, n: int, generation: int, parallel: int = 50) -> list[Echo]:
    sem = asyncio.Semaphore(parallel)
    clients = [Echo(url, generation) for _ in range(n)]

    async def one(client: Echo) -> None:
        async with sem:
            await client.open()

    await asyncio.gather(*(one(c) for c in clients))
    return clients


@pytest.mark.parametrize("workers,drain", [(1, 4.0), (2, 10.0)])
def test_reload_storm_keeps_websockets_and_retires_old_generations(members, proxy, workers, drain):
    a, b, c = members.ws("a", record=False), members.ws("b", record=False), members.ws("c", record=False)
    server = {"workers": workers, "drain_timeout": f"{drain}s", "close_spread": f"{SPREAD}s", "grace": "2s",
              "access_log": False}
    first = site_conf({"p1": {"members": [a.addr], "balance": "round_robin"}, "p2": [c.addr]},
                      routes=[{"pool": "p1"}], server=server)
    p = proxy(first)
    site = Site(p, a, b, c, server)
    plan = ["ab", "c", "a", "a", "ab", "c", "ab", "a", "c", "a"] * 2  # 20 reloads; "a" twice = no change
    report: dict = {"retired": {}, "checks": []}

    async def main():
        stop = asyncio.Event()
        clients = await open_many(p.ws_url, CLIENTS, 1)
        assert {cl.member for cl in clients} == {"a"}
        tasks = [asyncio.create_task(cl.run(stop)) for cl in clients]
        await asyncio.sleep(1.0)
        probing = asyncio.Event()
        prober = asyncio.create_task(probe(p.port, probing, report.setdefault("probes", [])))
        storm_start = time.monotonic()
        generation = 1
        for i, variant in enumerate(plan):
            if i == RELOADS // 2:  # a bad config: rejected, logged with its key path; the old one serves on
                site.write(site.text(variant).replace('balance = "round_robin"', 'balance = "round_robbin"'))
                sighup(p)
                bad = await asyncio.to_thread(p.wait_log, lambda r: r.get("key") == "pools.p1.balance", 10)
                report["bad"] = bad
                still = (await open_many(p.ws_url, 1, generation))[0]
                report["checks"].append((generation, plan[i - 1], still.member))
                clients.append(still)
                tasks.append(asyncio.create_task(still.run(stop)))
            site.write(site.text(variant))
            sighup(p)
            line = await asyncio.to_thread(reloaded, p, generation + 1)
            assert line is not None, f"reload {i + 1} not logged:\n{p.stderr_text()[-3000:]}"
            report["retired"][generation] = line["ts"]
            generation += 1
            # Every connection opened now sees the new config.
            fresh = await open_many(p.ws_url, 3, generation)
            for cl in fresh:
                report["checks"].append((generation, variant, cl.member))
            clients.extend(fresh)
            tasks.extend(asyncio.create_task(cl.run(stop)) for cl in fresh)
        report["storm_s"] = time.monotonic() - storm_start
        report["final"] = generation
        probing.set()
        await prober
        await asyncio.sleep(1.0)
        report["closed_during_storm"] = [(cl.generation, cl.close_code) for cl in clients if cl.closed_at]
        stop.set()  # every client finishes its exchange: then all sent == all echoed
        # The old generations' WebSockets get their Close 1001 after drain_timeout.
        deadline = time.monotonic() + drain + SPREAD + 10
        while time.monotonic() < deadline:
            if all(cl.closed_at for cl in clients if cl.generation < generation):
                break
            await asyncio.sleep(0.2)
        current = [cl for cl in clients if cl.generation == generation]
        for cl in current:  # still open and still echoing
            await cl.ws.send("still there")
            assert await asyncio.wait_for(cl.ws.recv(), 5) == "still there"
        for cl in current:
            await cl.ws.close()
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        report["clients"] = clients

    run(main(), timeout=240)
    clients = report["clients"]
    final = report["final"]
    assert report["storm_s"] < drain - 1, f"the storm took {report['storm_s']:.1f}s: drain_timeout too short to tell"

    # Zero messages lost, zero unexpected closes.
    errors = [e for cl in clients for e in cl.errors]
    assert errors == [], errors[:10]
    assert sum(cl.sent for cl in clients) == sum(cl.echoed for cl in clients) > CLIENTS * 5
    assert report["closed_during_storm"] == [], report["closed_during_storm"][:10]
    probes = report["probes"]
    assert len(probes) >= 10 and set(probes) == {b"HTTP/1.1 200 OK"}, sorted(set(probes))

    # New connections saw the config of the generation they were opened in.
    wrong = [(g, v, m) for g, v, m in report["checks"] if m not in Site.allowed(v)]
    assert wrong == [], wrong
    assert len(report["checks"]) == RELOADS * 3 + 1
    assert report["bad"] is not None and "round_robbin" in report["bad"]["msg"]

    # Old generations: every WebSocket got 1001, no earlier than drain_timeout after its retirement.
    old = [cl for cl in clients if cl.generation < final]
    assert old and all(cl.close_code == 1001 for cl in old), sorted({str(cl.close_code) for cl in old})
    for cl in old:
        lived = cl.closed_at - report["retired"][cl.generation]
        assert drain - 0.5 <= lived <= drain + SPREAD + 4, (cl.generation, lived)

    # ... and every old generation is logged as ended; only the current processes remain.
    for g in range(1, final):
        assert p.wait_log(lambda r, g=g: r.get("msg") == f"generation {g} ended", 10), f"generation {g} not ended"
    if workers > 1:
        assert wait_until(lambda: len(children(p.proc.pid)) == workers, 5), children(p.proc.pid)
        assert all(state(pid) == "S" or state(pid) == "R" for pid in children(p.proc.pid))
    assert p.proc.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_finishes_requests_and_closes_idle_keepalive(members, proxy, workers):
    """The old generation's HTTP side: an idle keep-alive connection is closed, a request in
    flight is answered (then the connection closes), and a connection accepted just before
    the reload that has not sent its request yet is still served."""
    h = members.http("h")
    p = proxy(site_conf({"web": [h.addr]}, server={"workers": workers, "drain_timeout": "5s"}))
    assert serving(p)
    idle = raw_connect(p.port)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    idle_file = idle.makefile("rb")
    assert read_response(idle_file).status == 200
    busy = raw_connect(p.port)
    busy.sendall(b"GET /longpoll?seconds=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)  # the request is at the member
    quiet = raw_connect(p.port)  # connected, nothing sent yet
    time.sleep(0.2)
    sighup(p)
    assert reloaded(p, 2) is not None, p.stderr_text()[-3000:]
    try:
        idle.settimeout(3)
        assert idle.recv(1) == b""  # closed by the proxy, no response to anything
        with busy.makefile("rb") as f:
            answer = read_response(f)
        assert answer.status == 200 and answer.body == b"slept 1.5", answer
        assert (answer.header("Connection") or "").lower() == "close"
        quiet.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with quiet.makefile("rb") as f:
            assert read_response(f).status == 200
    finally:
        for s in (idle, busy, quiet):
            s.close()
    assert raw_request(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_adds_and_removes_listeners(members, proxy, workers):
    a = members.ws("a")
    server = {"workers": workers, "drain_timeout": "2s", "close_spread": "0.5s"}
    p = proxy(site_conf({"p": [a.addr]}, server=server))
    other = free_port()
    two = site_conf({"p": [a.addr]}, server=server,
                    extra_listeners={"second": {"bind": f"{HOST}:{other}", "routes": [{"pool": "p"}]}})
    p.conf_path.write_text(two.replace("$PORT", str(p.port)))
    sighup(p)
    assert reloaded(p, 2) is not None, p.stderr_text()[-3000:]
    assert raw_request(other, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").body == b"a"
    # Now the first listener goes: its port closes; the second one keeps serving.
    only = site_conf({"p": [a.addr]}, server=server, listener={"bind": f"{HOST}:{other}"})
    p.conf_path.write_text(only)
    sighup(p)
    assert reloaded(p, 3) is not None, p.stderr_text()[-3000:]
    assert wait_until(lambda: not port_open(p.port), 5)
    assert raw_request(other, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").body == b"a"


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_that_cannot_listen_keeps_the_old_config(members, proxy, workers):
    a, b = members.ws("a"), members.ws("b")
    server = {"workers": workers}
    p = proxy(site_conf({"p": [a.addr]}, server=server))
    taken = a.port  # a port in use (the member's)
    conf = site_conf({"p": [b.addr]}, server=server,
                     extra_listeners={"second": {"bind": f"{HOST}:{taken}", "routes": [{"pool": "p"}]}})
    p.conf_path.write_text(conf.replace("$PORT", str(p.port)))
    sighup(p)
    line = p.wait_log(lambda r: r.get("msg", "").startswith("reload rejected: cannot listen"), 10)
    assert line is not None, p.stderr_text()[-3000:]
    assert raw_request(p.port, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").body == b"a"


PLUGIN = '''
from wsproxy.plugin import Plugin, on, respond


class Count(Plugin):
    @on("HTTP_REQUEST")
    def count(self, ctx, req):
        if req.path == "/count":
            return respond(200, str(self.shared.incr("hits")))
'''


def test_reload_keeps_plugin_shared_state(members, proxy, tmp_path):
    a = members.ws("a")
    (tmp_path / "count.py").write_text(PLUGIN)
    conf = site_conf({"p": [a.addr]}) + f'\n[[plugins]]\npath = "{tmp_path / "count.py"}"\n'
    p = proxy(conf)

    def hits() -> bytes:
        return raw_request(p.port, b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n").body

    assert [hits(), hits()] == [b"1", b"2"]
    sighup(p)
    assert reloaded(p, 2) is not None, p.stderr_text()[-3000:]
    assert hits() == b"3"


def test_old_worker_that_hangs_is_killed_after_its_drain(members, proxy):
    """No old process outlives drain_timeout + close_spread + a short linger: a draining
    worker that cannot exit (stopped here with SIGSTOP) is killed by the master, which says so."""
    a = members.ws("a")
    p = proxy(site_conf({"p": [a.addr]}, server={"workers": 2, "drain_timeout": "1s", "close_spread": "0.5s"}))
    assert serving(p)
    old = children(p.proc.pid)
    os.kill(old[0], signal.SIGSTOP)
    started = time.monotonic()
    sighup(p)
    line = p.wait_log(lambda r: r.get("msg") == "worker outlived its deadline: killed", 15)
    took = time.monotonic() - started
    assert line is not None and line["pid"] == old[0], p.stderr_text()[-3000:]
    assert 1.0 + 0.5 <= took <= 1.0 + 0.5 + 6, took
    assert wait_until(lambda: state(old[0]) is None, 5)  # killed and reaped
    assert wait_until(lambda: state(old[1]) is None, 5)  # the other one exited on its own
    assert p.wait_log(lambda r: r.get("msg") == "generation 1 ended", 5)
    assert len(children(p.proc.pid)) == 2
    assert raw_request(p.port, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n").body == b"a"
