#!/usr/bin/env python3
"""The benchmark's load client (picows on uvloop): one case per run, one JSON line out.

    python benchmarks/load.py pingpong  --url ws://127.0.0.1:8080/ --conns 100 --duration 3
    python benchmarks/load.py bulk      --url ... --conns 4 --size 65536 --inflight 4
    python benchmarks/load.py handshake --url ... --concurrency 32
    python benchmarks/load.py idle      --url ... --conns 9000
    (common: --proxy-pgid N  --member-pid N  --warmup 0.5)

Cases:
- ``pingpong``: each of ``--conns`` connections keeps exactly one 64-byte binary message
  in flight: send, wait for the echo, send again. Reports round trips per second (all
  connections together) and the p50/p99 of the round-trip time.
- ``bulk``: each of ``--conns`` connections keeps ``--inflight`` messages of ``--size``
  bytes in flight (a new one is sent as each echo arrives). Reports MB/s of payload echoed back (1 MB =
  10^6 bytes); "bytes relayed" counts both directions (sent + echoed), since each byte
  crosses the proxy twice.
- ``handshake``: ``--concurrency`` loops each doing: TCP connect, HTTP upgrade (101),
  Close frame, wait for the member's Close, TCP close; reports completed cycles per second.
- ``idle``: opens ``--conns`` WebSockets (spread over several 127.0.0.x source addresses)
  and leaves them idle; reports the growth of the proxy's RSS and fds divided by the count.

Measurement window: after ``--warmup`` seconds of the same load, the proxy's CPU time
(utime+stime over its process group, see procstat.py) is read, the load runs
``--duration`` seconds, and the CPU time is read again. The member's and this client's
CPU over the window are reported too (they share the other core: when their sum nears
100% of a core, the client side is the bottleneck, not the proxy).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import json
import os
import resource
import sys
import time
from pathlib import Path

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import Group, cpu_seconds, system_cpu  # noqa: E402

BINARY = WSMsgType.BINARY
CLOSE = WSMsgType.CLOSE
perf_ns = time.perf_counter_ns


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Window:
    """CPU readings around the measurement window."""

    def __init__(self, proxy: Group, member_pid: int | None):
        self.proxy = proxy
        self.member_pid = member_pid

    def _read(self):
        split = self.proxy.cpu_split() if self.proxy.pgid else None
        return (time.perf_counter(), split,
                cpu_seconds([self.member_pid]) if self.member_pid else None, _self_cpu(), system_cpu())

    def start(self):
        self.a = self._read()

    def stop(self):
        self.b = self._read()

    def result(self) -> dict:
        (t0, p0, m0, c0, s0), (t1, p1, m1, c1, s1) = self.a, self.b
        wall = t1 - t0
        ours = (c1 - c0) + ((sum(p1) - sum(p0)) if p0 is not None else 0) + ((m1 - m0) if m0 is not None else 0)
        return {
            # CPU of every other process on the machine over the window (user+nice+system of
            # /proc/stat minus ours): a busy neighbour makes the window suspect
            "other_cpu_s": max(0.0, (s1["tasks"] - s0["tasks"]) - ours),
            "irq_cpu_s": s1["irq"] - s0["irq"],
            "steal_s": s1["steal"] - s0["steal"],
            "window_s": wall,
            "proxy_cpu_s": (sum(p1) - sum(p0)) if p0 is not None else None,
            "proxy_sys_s": (p1[1] - p0[1]) if p0 is not None else None,
            "member_cpu_s": (m1 - m0) if m0 is not None else None,
            "client_cpu_s": c1 - c0,
        }


def _pct(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


class State:
    def __init__(self):
        self.running = True
        self.recording = False
        self.lat: list[int] = []
        self.count = 0
        self.rx_bytes = 0
        self.errors = 0
        self.pending = 0
        self.idle = None  # future: set when pending drops to 0 after running stops


# ----------------------------------------------------------------------------- ping-pong

class PingPong(WSListener):
    def __init__(self, st: State, payload: bytes):
        self.st = st
        self.payload = payload
        self.sent = 0
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def kick(self) -> None:
        self.st.pending += 1
        self.sent = perf_ns()
        self.transport.send(BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is BINARY:
            st = self.st
            now = perf_ns()
            if st.recording:
                st.lat.append(now - self.sent)
            if st.running:
                self.sent = now
                transport.send(BINARY, self.payload)
            else:
                st.pending -= 1
                if st.pending == 0 and st.idle is not None and not st.idle.done():
                    st.idle.set_result(None)
        elif frame.msg_type is CLOSE:
            transport.disconnect()


async def _open(factory, url: str, n: int, concurrency: int, **kw) -> list:
    sem = asyncio.Semaphore(concurrency)
    out: list = [None] * n

    async def one(i):
        async with sem:
            out[i] = await ws_connect(factory, url, **kw)

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


async def _close_all(conns, timeout=5.0) -> None:
    for t, _l in conns:
        try:
            t.send_close(WSCloseCode.OK)
        except Exception:
            pass
    try:
        await asyncio.wait_for(asyncio.gather(*(t.wait_disconnected() for t, _l in conns)), timeout)
    except (asyncio.TimeoutError, Exception):
        for t, _l in conns:
            t.disconnect(False)


async def case_pingpong(a, win: Window) -> dict:
    st = State()
    payload = os.urandom(a.size)
    conns = await _open(lambda: PingPong(st, payload), a.url, a.conns, 100)
    for _t, l in conns:
        l.kick()
    await asyncio.sleep(a.warmup)
    win.start()
    st.recording = True
    await asyncio.sleep(a.duration)
    st.recording = False
    win.stop()
    st.running = False
    st.idle = asyncio.get_running_loop().create_future()
    if st.pending:
        try:
            await asyncio.wait_for(st.idle, 5)
        except asyncio.TimeoutError:
            st.errors += st.pending
    await _close_all(conns)
    w = win.result()
    lat = sorted(st.lat)
    n = len(lat)
    return {
        **w, "conns": a.conns, "size": a.size, "count": n, "rate": n / w["window_s"],
        "p50_us": _pct(lat, 0.50) / 1e3, "p99_us": _pct(lat, 0.99) / 1e3,
        "cpu_us_per_op": (w["proxy_cpu_s"] / n * 1e6) if (w["proxy_cpu_s"] is not None and n) else None,
        "errors": st.errors,
    }


# ----------------------------------------------------------------------------- bulk

class Bulk(WSListener):
    def __init__(self, st: State, payload: bytes):
        self.st = st
        self.payload = payload
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is BINARY:
            st = self.st
            if st.recording:
                st.rx_bytes += frame.payload_size
                st.count += 1
            if st.running:
                transport.send(BINARY, self.payload)
            else:
                st.pending -= 1
                if st.pending == 0 and st.idle is not None and not st.idle.done():
                    st.idle.set_result(None)
        elif frame.msg_type is CLOSE:
            transport.disconnect()


async def case_bulk(a, win: Window) -> dict:
    st = State()
    payload = os.urandom(a.size)
    conns = await _open(lambda: Bulk(st, payload), a.url, a.conns, 10,
                        max_frame_size=max(a.size * 2, 1 << 20))
    for t, _l in conns:
        for _ in range(a.inflight):
            st.pending += 1
            t.send(BINARY, payload)
    await asyncio.sleep(a.warmup)
    win.start()
    st.recording = True
    await asyncio.sleep(a.duration)
    st.recording = False
    win.stop()
    st.running = False
    st.idle = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(st.idle, 10)
    except asyncio.TimeoutError:
        st.errors += st.pending
    await _close_all(conns)
    w = win.result()
    relayed = 2 * st.rx_bytes
    return {
        **w, "conns": a.conns, "size": a.size, "inflight": a.inflight, "count": st.count,
        "rx_bytes": st.rx_bytes, "relayed_bytes": relayed,
        "mb_per_s": st.rx_bytes / w["window_s"] / 1e6,
        "cpu_ms_per_gb": (w["proxy_cpu_s"] * 1e3 / (relayed / 1e9))
        if (w["proxy_cpu_s"] is not None and relayed) else None,
        "errors": st.errors,
    }


# ----------------------------------------------------------------------------- handshakes

class Closer(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is CLOSE:
            transport.disconnect()


async def case_handshake(a, win: Window) -> dict:
    st = State()
    url = a.url
    first_error: list[str] = []

    async def loop_one():
        while st.running:
            t0 = perf_ns()
            try:
                async with asyncio.timeout(10):
                    t, _l = await ws_connect(Closer, url, websocket_handshake_timeout=10)
                    t.send_close(WSCloseCode.OK)
                    await t.wait_disconnected()
            except Exception as e:  # counted, the loop goes on
                st.errors += 1
                if not first_error:
                    first_error.append(repr(e))
                await asyncio.sleep(0.01)
                continue
            if st.recording:
                st.count += 1
                st.lat.append(perf_ns() - t0)

    tasks = [asyncio.create_task(loop_one()) for _ in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    win.start()
    st.recording = True
    await asyncio.sleep(a.duration)
    st.recording = False
    win.stop()
    st.running = False
    await asyncio.wait(tasks, timeout=15)
    w = win.result()
    lat = sorted(st.lat)
    n = st.count
    return {
        **w, "concurrency": a.concurrency, "count": n, "rate": n / w["window_s"],
        "p50_us": _pct(lat, 0.5) / 1e3, "p99_us": _pct(lat, 0.99) / 1e3,
        "cpu_us_per_op": (w["proxy_cpu_s"] / n * 1e6) if (w["proxy_cpu_s"] is not None and n) else None,
        "errors": st.errors, "first_error": first_error[0] if first_error else None,
    }


# ----------------------------------------------------------------------------- idle

class Quiet(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is CLOSE:
            transport.disconnect()


async def case_idle(a, win: Window) -> dict:
    proxy = win.proxy
    sources = [f"127.0.0.{i}" for i in range(2, 2 + a.sources)]
    kw = dict(read_buffer_init_size=1024, websocket_handshake_timeout=60)
    # warm-up: lazily built state (imports, pools, first buffers) belongs to the baseline
    warm = await _open(Quiet, a.url, 64, 16, **kw)
    await _close_all(warm)
    await asyncio.sleep(0.5)
    rss0, fds0 = proxy.rss_kib(), proxy.fds()
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(a.concurrency)
    conns: list = []
    errors = 0
    first_error: list[str] = []

    async def one(i):
        nonlocal errors
        async with sem:
            try:
                conns.append(await ws_connect(Quiet, a.url, local_addr=(sources[i % len(sources)], 0), **kw))
            except Exception as e:
                errors += 1
                if not first_error:
                    first_error.append(repr(e))

    await asyncio.gather(*(one(i) for i in range(a.conns)))
    open_s = time.perf_counter() - t0
    await asyncio.sleep(a.settle)
    rss1, fds1 = proxy.rss_kib(), proxy.fds()
    n = len(conns)
    alive = sum(1 for t, _l in conns if not t.is_disconnected)
    # No orderly close of thousands of sockets: the process exits, run.py stops the proxy.
    return {
        "conns": n, "alive": alive, "open_s": open_s, "errors": errors,
        "first_error": first_error[0] if first_error else None,
        "rss_before_kib": rss0, "rss_after_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / n if n else None,
        "fds_per_conn": (fds1 - fds0) / n if n else None,
    }


# ----------------------------------------------------------------------------- main

CASES = {"pingpong": case_pingpong, "bulk": case_bulk, "handshake": case_handshake, "idle": case_idle}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--url", required=True)
    ap.add_argument("--proxy-pgid", type=int, default=0, help="process group of the proxy (0: none)")
    ap.add_argument("--member-pid", type=int, default=0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sources", type=int, default=16, help="idle: 127.0.0.2.. source addresses")
    ap.add_argument("--settle", type=float, default=1.0, help="idle: seconds before reading RSS")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.getLogger("picows").setLevel(logging.ERROR)  # no flow-control chatter
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    win = Window(Group(a.proxy_pgid or None), a.member_pid or None)
    result = uvloop.run(CASES[a.case](a, win))
    result = {"case": a.case, **result}
    print(json.dumps(result), flush=True)
    os._exit(0)  # idle: skip tearing down thousands of picows transports one by one


if __name__ == "__main__":
    sys.exit(main())
