#!/usr/bin/env python3
"""Soak: mixed traffic through wsproxy for minutes; its RSS and open fds must stay flat.

    python benchmarks/soak.py                     # 10 minutes (--duration 600)
    python benchmarks/soak.py --quick             # 1 minute
    python benchmarks/soak.py --append benchmarks/RESULTS.md

One wsproxy (C build, one worker, the defaults otherwise; ``--pure`` for the pure build) in
front of one member (this file, ``member`` mode: aiohttp, HTTP and WebSocket). Workers in
this process loop over a weighted mix of operations, each on its own connection:

- ``ws_echo``: handshake, 1-20 echoed messages (16 B - 16 KiB, text or binary), clean close;
- ``ws_reset``: handshake, a few messages, then a TCP reset (SO_LINGER 0, no Close);
- ``ws_member_drop``: handshake; the member aborts its connection after the first message
  (no Close): the proxy must send the client Close 1014 (or, at worst, close the TCP connection);
- ``http_get``: GET a small body or 64 KiB, on a keep-alive connection or a new one;
- ``http_invalid``: a smuggling-style request (CL + TE, bad chunk size...): 400 and close;
- ``http_abandon``: part of a head, then the client goes away.

Besides, ``--resident`` WebSocket connections stay open for the whole run, each sending a
message every few seconds. Every ``--sample`` seconds the proxy's VmRSS (/proc/PID/status)
and open fds (/proc/PID/fd) are read. The report: start (after the warm-up), middle, end,
max, the slope over the run after the warm-up (least squares, KiB/min and fds/min), a verdict
("flat": RSS slope under ``--rss-slope`` KiB/min and fds back to the idle count once the load
stops), and the operation and error counts. Errors are outcomes that are wrong (a bad echo,
an unexpected status, a timeout), not the resets the mix makes on purpose.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
HOST = "127.0.0.1"

MIX = {  # operation: weight
    "ws_echo": 30, "ws_reset": 10, "ws_member_drop": 5, "http_get": 40, "http_invalid": 8, "http_abandon": 7,
}
INVALID_REQUESTS = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
]
SITE_CONF = """\
[server]
workers = 1
log_level = "warning"
access_log = false
admin = "{host}:{admin_port}"

[listeners.soak]
bind = "{host}:{port}"
routes = [ {{ path_prefix = "/ws/", pool = "ws" }}, {{ pool = "web" }} ]

[pools.ws]
members = ["{host}:{member_port}"]

[pools.web]
members = ["{host}:{member_port}"]
"""


# ----------------------------------------------------------------------------- member

def run_member(port: int) -> None:
    """aiohttp member: GET /small, GET /bytes/N, WebSocket /ws/echo, /ws/drop (aborts the
    TCP connection after the first message, without a Close)."""
    from aiohttp import WSMsgType, web

    async def small(request):
        return web.Response(text="ok")

    async def many_bytes(request):
        return web.Response(body=b"b" * int(request.match_info["n"]))

    async def echo(request):
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def drop(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        request.transport.abort()
        return ws

    app = web.Application()
    app.add_routes([web.get("/small", small), web.get("/bytes/{n}", many_bytes), web.get("/ws/echo", echo),
                    web.get("/ws/drop", drop)])
    web.run_app(app, host=HOST, port=port, print=None, access_log=None, handle_signals=True)


# ----------------------------------------------------------------------------- client side

class Outcome(Exception):
    """An operation went wrong (counted as an error with this reason)."""


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    # Mask by XOR with the key repeated: int arithmetic is fast enough for 16 KiB.
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return head + key + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    if b1 & 0x80:
        raise Outcome("masked frame from the proxy")
    return b0 & 0x0F, await reader.readexactly(n)


async def read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ", 2)[1]), headers


async def ws_open(port: int, path: str):
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET %s HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key))
    status, _ = await read_response_head(reader)
    if status != 101:
        writer.close()
        raise Outcome(f"handshake answered {status}")
    return reader, writer


async def ws_echo_round(reader, writer, rng: random.Random) -> None:
    size = rng.choice((16, 200, 1000, 16384))
    text = rng.random() < 0.5
    payload = (b"t" if text else os.urandom(1)) * size
    writer.write(ws_frame(0x1 if text else 0x2, payload))
    while True:
        opcode, data = await read_frame(reader)
        if opcode in (0x9, 0xA):  # a ping from the proxy's keep-alive (not on by default)
            continue
        if data != payload:
            raise Outcome("echo differs")
        return


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def op_ws_echo(port: int, rng: random.Random) -> None:
    reader, writer = await ws_open(port, "/ws/echo")
    try:
        for _ in range(rng.randint(1, 20)):
            await ws_echo_round(reader, writer, rng)
        writer.write(ws_frame(0x8, struct.pack("!H", 1000)))
        opcode, data = await read_frame(reader)
        if opcode != 0x8:
            raise Outcome("no Close after our Close")
        if await reader.read() != b"":  # the proxy (as a server) closes the TCP connection
            raise Outcome("bytes after the Close")
    finally:
        writer.close()


async def op_ws_reset(port: int, rng: random.Random) -> None:
    reader, writer = await ws_open(port, "/ws/echo")
    for _ in range(rng.randint(0, 3)):
        await ws_echo_round(reader, writer, rng)
    reset(writer)


async def op_ws_member_drop(port: int, rng: random.Random) -> None:
    reader, writer = await ws_open(port, "/ws/drop")
    try:
        writer.write(ws_frame(0x1, b"bye"))
        try:
            opcode, data = await read_frame(reader)
        except asyncio.IncompleteReadError:
            return "ws_member_drop (no Close, TCP close)"  # acceptable, but counted apart
        if opcode != 0x8 or struct.unpack("!H", data[:2])[0] != 1014:  # "member lost" (README)
            raise Outcome(f"member drop: got opcode {opcode} {data[:2]!r}")
    finally:
        writer.close()


class KeepAlivePool:
    """A few keep-alive connections for GETs, reused across operations."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list = []

    async def get(self, path: str, rng: random.Random) -> None:
        fresh = rng.random() < 0.3 or not self.idle
        reader, writer = await asyncio.open_connection(HOST, self.port) if fresh else self.idle.pop()
        try:
            writer.write(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % path.encode())
            status, headers = await read_response_head(reader)
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            if status != 200 or not body:
                raise Outcome(f"GET {path}: {status}")
        except BaseException:
            writer.close()
            raise
        if len(self.idle) < 8:
            self.idle.append((reader, writer))
        else:
            writer.close()


async def op_http_invalid(port: int, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(rng.choice(INVALID_REQUESTS))
        status, _ = await read_response_head(reader)
        if status != 400:
            raise Outcome(f"invalid request answered {status}")
        await reader.read()  # then the proxy closes
    finally:
        writer.close()


async def op_http_abandon(port: int, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /small HTTP/1.1\r\nHost: so"[: rng.randint(1, 28)])
    await asyncio.sleep(rng.uniform(0, 0.05))
    if rng.random() < 0.5:
        reset(writer)
    else:
        writer.close()


async def resident(port: int, stop: asyncio.Event, counts: Counter, errors: Counter, seed: int) -> None:
    """One long-lived WebSocket, a message every 2-6 s; reconnects if it breaks."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            reader, writer = await ws_open(port, "/ws/echo")
        except (OSError, Outcome, asyncio.IncompleteReadError) as exc:
            errors[f"resident: {type(exc).__name__}: {exc}"] += 1
            await asyncio.sleep(1)
            continue
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), rng.uniform(2, 6))
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    break
                await asyncio.wait_for(ws_echo_round(reader, writer, rng), 10)
                counts["resident_echo"] += 1
        except (OSError, Outcome, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            errors[f"resident: {type(exc).__name__}: {exc}"] += 1
        finally:
            writer.close()


async def worker(port: int, stop: asyncio.Event, pause: float, counts: Counter, errors: Counter, seed: int) -> None:
    rng = random.Random(seed)
    pool = KeepAlivePool(port)
    ops, weights = zip(*MIX.items())
    while not stop.is_set():
        op = rng.choices(ops, weights)[0]
        try:
            if op == "http_get":
                coro = pool.get("/bytes/65536" if rng.random() < 0.1 else "/small", rng)
            else:
                coro = OPERATIONS[op](port, rng)
            label = await asyncio.wait_for(coro, 15)
            counts[label or op] += 1
        except (OSError, Outcome, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError) as exc:
            errors[f"{op}: {type(exc).__name__}: {str(exc)[:80]}"] += 1
        await asyncio.sleep(pause)
    for _, writer in pool.idle:
        writer.close()


OPERATIONS = {"ws_echo": op_ws_echo, "ws_reset": op_ws_reset, "ws_member_drop": op_ws_member_drop,
              "http_invalid": op_http_invalid, "http_abandon": op_http_abandon}


# ----------------------------------------------------------------------------- sampling

def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


async def load(args, port: int, proxy_pid: int) -> dict:
    stop = asyncio.Event()
    counts, errors = Counter(), Counter()
    samples = []  # (seconds since start, rss KiB, fds, 1-minute load average)
    tasks = [asyncio.create_task(resident(port, stop, counts, errors, 1000 + i)) for i in range(args.resident)]
    tasks += [asyncio.create_task(worker(port, stop, args.pause, counts, errors, i)) for i in range(args.concurrency)]
    started = time.monotonic()
    next_print = started + 60
    while (now := time.monotonic()) - started < args.duration:
        samples.append((now - started, proc_rss_kib(proxy_pid), proc_fds(proxy_pid), load_average()))
        if now >= next_print:
            next_print += 60
            print(f"  {now - started:5.0f}s rss {samples[-1][1] / 1024:.1f} MiB fds {samples[-1][2]} "
                  f"ops {sum(counts.values()):,} errors {sum(errors.values())}", file=sys.stderr, flush=True)
        await asyncio.sleep(min(args.sample, max(0.0, args.duration - (now - started))))
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    return {"samples": samples, "counts": counts, "errors": errors, "seconds": time.monotonic() - started}


# ----------------------------------------------------------------------------- the run

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def metric_lines(admin_port: int, prefix: str) -> list[str]:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{admin_port}/metrics", timeout=10) as resp:
        return [line for line in resp.read().decode().splitlines()
                if line.startswith(prefix) and not line.endswith(" 0")]


def idle_fds(pid: int, settle: float = 40.0) -> int:
    """The proxy's fd count once it has nothing to do: the fewest seen while it settles
    (idle member connections are kept for the pool's keepalive_timeout, 30 s by default)."""
    deadline, best = time.monotonic() + settle, proc_fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        best = min(best, proc_fds(pid))
    return best


def report(args, run: dict, fds_idle_before: int, fds_idle_after: int, rejections: list[str], load_avg: tuple,
           command: str) -> str:
    samples = run["samples"]
    warm = [s for s in samples if s[0] >= args.warmup] or samples
    rss_slope = slope_per_minute([(t, r) for t, r, _, _ in warm])
    fds_slope = slope_per_minute([(t, f) for t, _, f, _ in warm])
    loads = [s[3] for s in samples]
    start, mid, end = warm[0], warm[len(warm) // 2], warm[-1]
    ops = sum(run["counts"].values())
    errors = sum(run["errors"].values())
    flat = abs(rss_slope) < args.rss_slope and fds_idle_after <= fds_idle_before
    verdict = "flat" if flat else "GROWING"
    minutes = run["seconds"] / 60
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    lines = [
        f"## Soak (issue #7): {minutes:.0f} min of mixed traffic through wsproxy ({'pure' if args.pure else 'C'} build)",
        "",
        f"Generated by `benchmarks/soak.py` on {stamp} (commit {commit}, working tree). Load average "
        f"(1 min) {load_avg[0]} before, {statistics.fmean(loads):.2f} on average during the run (max "
        f"{max(loads):.2f}), {load_avg[1]} after; on {os.cpu_count()} CPUs, whatever else ran meanwhile included.",
        "",
        "```",
        command,
        "```",
        "",
        f"**Verdict: {verdict}** (RSS slope after the {args.warmup:g} s warm-up under {args.rss_slope:g} KiB/min, and "
        f"open fds back to the idle count once the load stops).",
        "",
        "| | RSS, KiB | open fds |",
        "|---|---:|---:|",
        f"| first sample ({samples[0][0]:.0f} s, idle) | {samples[0][1]:,} | {samples[0][2]} |",
        f"| start (after warm-up, {start[0]:.0f} s) | {start[1]:,} | {start[2]} |",
        f"| middle ({mid[0]:.0f} s) | {mid[1]:,} | {mid[2]} |",
        f"| end ({end[0]:.0f} s) | {end[1]:,} | {end[2]} |",
        f"| min / max | {min(s[1] for s in samples):,} / {max(s[1] for s in samples):,} | "
        f"{min(s[2] for s in samples)} / {max(s[2] for s in samples)} |",
        f"| slope after warm-up (least squares), per minute | {rss_slope:+.1f} | {fds_slope:+.2f} |",
        f"| idle before / after the load | | {fds_idle_before} / {fds_idle_after} |",
        "",
        f"{ops:,} operations ({ops / run['seconds']:.0f}/s) by {args.concurrency} workers plus {args.resident} "
        f"resident WebSockets; {errors} errors; {len(samples)} samples every {args.sample:g} s.",
        "",
        "| operation | count |",
        "|---|---:|",
        *[f"| {op} | {n:,} |" for op, n in sorted(run["counts"].items())],
        "",
    ]
    if run["errors"]:
        lines += ["| error | count |", "|---|---:|",
                  *[f"| {e} | {n} |" for e, n in run["errors"].most_common(12)], ""]
    if rejections:
        lines += ["Proxy counters at the end:", "", "```", *rejections, "```", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--quick", action="store_true", help="60 s, 15 s warm-up")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds left out of start and slope")
    ap.add_argument("--concurrency", type=int, default=16, help="workers, each one operation at a time")
    ap.add_argument("--resident", type=int, default=100, help="long-lived WebSocket connections")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds a worker waits between operations")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples")
    ap.add_argument("--rss-slope", type=float, default=128.0, help="KiB/min under which RSS is flat")
    ap.add_argument("--pure", action="store_true", help="the pure-Python build (WSPROXY_NO_EXTENSIONS=1)")
    ap.add_argument("--append", type=Path, help="append the markdown section to this file")
    ap.add_argument("--member", type=int, help=argparse.SUPPRESS)  # member mode (internal)
    args = ap.parse_args()
    if args.member:
        run_member(args.member)
        return 0
    if args.quick:
        args.duration, args.warmup = 60.0, 15.0
    member_port, port, admin_port = free_port(), free_port(), free_port()
    load_start = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        conf = Path(tmp) / "site.conf"
        conf.write_text(SITE_CONF.format(host=HOST, port=port, admin_port=admin_port, member_port=member_port))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("WSPROXY_NO_EXTENSIONS", None)
        if args.pure:
            env["WSPROXY_NO_EXTENSIONS"] = "1"
        member = subprocess.Popen([PY, __file__, "--member", str(member_port)], stdin=subprocess.DEVNULL)
        proxy = subprocess.Popen([PY, "-m", "wsproxy", "-c", str(conf)], env=env, stdin=subprocess.DEVNULL,
                                 stderr=open(Path(tmp) / "proxy.log", "wb"))
        try:
            wait_port(member_port, member)
            wait_port(port, proxy)
            wait_port(admin_port, proxy)
            fds_idle_before = idle_fds(proxy.pid, 2.0)
            print(f"soak: {args.duration:g} s, proxy pid {proxy.pid}", file=sys.stderr, flush=True)
            run = asyncio.run(load(args, port, proxy.pid))
            fds_idle_after = idle_fds(proxy.pid)
            counters = metric_lines(admin_port, "wsproxy_rejections_total")
            if proxy.poll() is not None:
                raise SystemExit("the proxy died:\n" + (Path(tmp) / "proxy.log").read_text()[-3000:])
        finally:
            for proc in (proxy, member):
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    load_end = Path("/proc/loadavg").read_text().split()[0]
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    section = report(args, run, fds_idle_before, fds_idle_after, counters, (load_start, load_end), command.strip())
    print(section)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
