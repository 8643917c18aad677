#!/usr/bin/env python3
"""Slowloris against wsproxy and HAProxy: healthy clients' latency while many half-open
request heads trickle in, and how the head timeout clears them.

    python benchmarks/slowloris.py                      # 9,000 slow connections, 10 s head timeout
    python benchmarks/slowloris.py --conns 5000 --head-timeout 4 --proxies wsproxy
    python benchmarks/slowloris.py --append benchmarks/RESULTS.md

For each proxy (HAProxy only when installed): one member (tests/integration/servers/
http_app.py, aiohttp: GET and a WebSocket echo on /ws), the proxy with its head timeout set
(wsproxy ``head_timeout``, HAProxy ``timeout http-request``), then

1. a baseline: healthy clients in this process do rounds of a WebSocket echo round trip (an
   open connection), a GET on a keep-alive connection and a GET on a new connection;
2. the attack: tests/integration/servers/slow_clients.py opens ``--conns`` connections
   (``--rate`` per second) that each send a byte of a never-ending head every ``--interval``
   seconds; the healthy rounds go on until the proxy has closed every slow connection;
3. the proxy's CPU time over the attack, its RSS and open fds before, at the peak and after.

The proxy is pinned to CPU 0, the rest to CPU 1 (taskset, when installed), as in run.py.
The markdown section goes to stdout, and is appended to ``--append`` FILE when given.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = ROOT / "tests" / "integration" / "servers"
PY = sys.executable
PROXY_CPU, LOAD_CPU = "0", "1"
KINDS = (("ws_echo", "WebSocket echo round trip"), ("http_keepalive", "GET, keep-alive connection"),
         ("http_new_conn", "GET, new connection"))

sys.path.insert(0, str(HERE))
import procstat  # noqa: E402
from run import HarnessError, Proc, find_tool, free_port, port_open, raise_nofile  # noqa: E402

WSPROXY_CONF = """\
[server]
workers = 1
log_level = "warning"
access_log = false
grace = "2s"

[listeners.slow]
bind = "127.0.0.1:{port}"
head_timeout = "{head_timeout_ms}ms"
max_conns = {maxconn}
routes = [ {{ pool = "member" }} ]

[pools.member]
members = ["127.0.0.1:{member_port}"]
"""

HAPROXY_CONF = """\
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request {head_timeout_ms}ms
    timeout http-keep-alive 60s

frontend slow
    bind 127.0.0.1:{port} backlog 4096
    maxconn {maxconn}
    default_backend member

backend member
    server m1 127.0.0.1:{member_port} maxconn {maxconn}
"""


# ----------------------------------------------------------------------------- healthy clients

async def read_http_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def probe(port: int, keep_going, max_rounds: int, pause: float, on_round) -> dict[str, list[float]]:
    """Rounds of the three healthy requests; latencies in seconds per kind."""
    from websockets.asyncio.client import connect

    latencies = {kind: [] for kind, _ in KINDS}
    get = b"GET /healthy HTTP/1.1\r\nHost: healthy.example\r\n\r\n"
    async with connect(f"ws://127.0.0.1:{port}/ws", proxy=None, compression=None, ping_interval=None) as ws:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            rounds = 0
            while rounds < max_rounds and keep_going():
                rounds += 1
                t = time.perf_counter()
                await ws.send(b"x" * 32)
                await ws.recv()
                latencies["ws_echo"].append(time.perf_counter() - t)
                t = time.perf_counter()
                writer.write(get)
                if await read_http_response(reader) != 200:
                    raise HarnessError("healthy keep-alive GET failed")
                latencies["http_keepalive"].append(time.perf_counter() - t)
                t = time.perf_counter()
                r2, w2 = await asyncio.open_connection("127.0.0.1", port)
                w2.write(get)
                if await read_http_response(r2) != 200:
                    raise HarnessError("healthy GET on a new connection failed")
                latencies["http_new_conn"].append(time.perf_counter() - t)
                w2.close()
                on_round(rounds)
                await asyncio.sleep(pause)
        finally:
            writer.close()
    return latencies


# ----------------------------------------------------------------------------- one proxy

def pinned(taskset: str | None, cpu: str, argv: list[str]) -> list[str]:
    return [taskset, "-c", cpu, *argv] if taskset else argv


def wait_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited:\n{proc.tail()}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise HarnessError(f"{proc.name} did not listen on {port}:\n{proc.tail()}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_open(clients: list[dict]) -> int:
    events = sorted([(c["connected"], 1) for c in clients] + [(c["closed"], -1) for c in clients if c["closed"]])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def run_one(name: str, args, tmp: Path, nofile: int, tools: dict) -> dict:
    member_port, port = free_port(), free_port()
    # HAProxy wants 2 fds per maxconn (both sides) within RLIMIT_NOFILE; slow heads take one.
    maxconn = (nofile - 100) // 2 if name == "haproxy" else args.conns + 2000
    member = Proc("member", pinned(tools["taskset"], LOAD_CPU, [PY, str(SERVERS / "http_app.py"), "--port",
                                                                str(member_port)]), tmp / f"{name}-member.log")
    proxy = None
    try:
        wait_port(member, member_port)
        if name == "wsproxy":
            conf = tmp / "site.conf"
            conf.write_text(WSPROXY_CONF.format(port=port, member_port=member_port, maxconn=maxconn,
                                                head_timeout_ms=round(args.head_timeout * 1000)))
            argv = [PY, "-m", "wsproxy", "-c", str(conf)]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
        else:
            conf = tmp / "haproxy.cfg"
            conf.write_text(HAPROXY_CONF.format(port=port, member_port=member_port, maxconn=maxconn,
                                                head_timeout_ms=round(args.head_timeout * 1000)))
            argv, env = [tools["haproxy"], "-db", "-f", str(conf)], None
        argv = ["bash", "-c", f'ulimit -n {nofile}; exec "$@"', "bash", *argv]
        proxy = Proc(name, pinned(tools["taskset"], PROXY_CPU, argv), tmp / f"{name}.log", env=env)
        wait_port(proxy, port)
        group = procstat.Group(proxy.pgid)

        asyncio.run(probe(port, lambda: True, 30, args.pause, lambda n: None))  # warm-up
        before = asyncio.run(probe(port, lambda: True, args.baseline, args.pause, lambda n: None))
        rss_before, fds_before, cpu_before = group.rss_kib(), group.fds(), group.cpu()
        peaks = {"rss": rss_before, "fds": fds_before}

        def sample(n: int) -> None:
            if n % 20 == 0:
                peaks["rss"] = max(peaks["rss"], group.rss_kib())
                peaks["fds"] = max(peaks["fds"], group.fds())

        report = tmp / f"{name}-slow.json"
        attacker = subprocess.Popen(pinned(tools["taskset"], LOAD_CPU, [
            PY, str(SERVERS / "slow_clients.py"), "--port", str(port), "--conns", str(args.conns),
            "--interval", args.interval, "--rate", str(args.rate), "--report", str(report),
            "--duration", str(args.head_timeout * 3 + args.conns / args.rate + 30)]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        during = asyncio.run(probe(port, lambda: attacker.poll() is None, 10**7, args.pause, sample))
        output = attacker.communicate(timeout=120)[0]
        attack_s = time.monotonic() - started
        if attacker.returncode != 0:
            raise HarnessError(f"slow_clients.py failed:\n{output}")
        cpu_attack = group.cpu() - cpu_before
        time.sleep(3.0)  # lingering closes end
        rss_after, fds_after = group.rss_kib(), group.fds()
    finally:
        if proxy is not None:
            proxy.stop()
        member.stop()
    result = json.loads(report.read_text())
    clients = result["clients"]
    delays = [c["closed"] - c["connected"] for c in clients if c["closed"] is not None and c["closed_by"] == "server"]
    statuses: dict[str, int] = {}
    for c in clients:
        key = c["status"] or "(nothing)"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "proxy": name, "conns": len(clients), "failed": result["failed"], "open_s": result["opened"] - result["started"],
        "peak_open": peak_open(clients), "attack_s": attack_s,
        "closed_by_server": sum(c["closed_by"] == "server" for c in clients), "statuses": statuses,
        "close_p50": statistics.median(delays) if delays else None, "close_max": max(delays) if delays else None,
        "cpu_s": cpu_attack, "rss_before": rss_before, "rss_peak": peaks["rss"], "rss_after": rss_after,
        "fds_before": fds_before, "fds_peak": peaks["fds"], "fds_after": fds_after,
        "latency": {kind: {"before": before[kind], "during": during[kind]} for kind, _ in KINDS},
    }


# ----------------------------------------------------------------------------- report

def render(results: list[dict], args, command: str, load: str) -> str:
    ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
    mib = lambda k: f"{k / 1024:.1f}"  # noqa: E731
    names = {"wsproxy": "wsproxy", "haproxy": "HAProxy"}
    head = "| | " + " | ".join(names[r["proxy"]] for r in results) + " |"
    rows = [head, "|---|" + "---:|" * len(results)]

    def row(label: str, cell) -> None:
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    row("slow connections (failed to open)", lambda r: f"{r['conns']:,} ({r['failed']})")
    row("opened in, s / most open at once", lambda r: f"{r['open_s']:.1f} / {r['peak_open']:,}")
    for kind, label in KINDS:
        row(f"{label}: p50 / p99 before, ms", lambda r, k=kind: "%s / %s" % (
            ms(statistics.median(r["latency"][k]["before"])), ms(quantile(r["latency"][k]["before"], .99))))
        row(f"{label}: p50 / p99 / max during, ms", lambda r, k=kind: "%s / %s / %s" % (
            ms(statistics.median(r["latency"][k]["during"])), ms(quantile(r["latency"][k]["during"], .99)),
            ms(max(r["latency"][k]["during"]))))
    row("healthy samples before / during (per kind)", lambda r: "%d / %d" % (
        len(r["latency"]["ws_echo"]["before"]), len(r["latency"]["ws_echo"]["during"])))
    row("closed by the proxy", lambda r: f"{r['closed_by_server']:,}")
    row("what they got", lambda r: ", ".join(f"{k} x{v:,}" for k, v in sorted(r["statuses"].items())))
    row("closed after connecting: p50 / max, s", lambda r: "%.2f / %.2f" % (r["close_p50"] or 0, r["close_max"] or 0))
    row("attack duration (first connect to last close), s", lambda r: f"{r['attack_s']:.1f}")
    row("proxy CPU over the attack, s (µs per slow connection)",
        lambda r: f"{r['cpu_s']:.2f} ({r['cpu_s'] / max(r['conns'], 1) * 1e6:.0f})")
    row("proxy RSS before / peak / 3 s after, MiB",
        lambda r: f"{mib(r['rss_before'])} / {mib(r['rss_peak'])} / {mib(r['rss_after'])}")
    row("proxy open fds before / peak / after", lambda r: f"{r['fds_before']} / {r['fds_peak']} / {r['fds_after']}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    return "\n".join([
        f"## Slowloris (issue #7): {args.conns:,} half-open heads, a byte every {args.interval} s",
        "",
        f"Generated by `benchmarks/slowloris.py` on {stamp} (commit {commit}, working tree). Head timeout "
        f"{args.head_timeout:g} s (wsproxy `head_timeout`, HAProxy `timeout http-request`); slow connections "
        f"opened at up to {args.rate:g}/s from one process; healthy rounds every {args.pause * 1000:g} ms. "
        f"Proxy on CPU {PROXY_CPU}, member, attacker and healthy clients on CPU {LOAD_CPU}. "
        f"Load average at the start: {load}.",
        "",
        "```",
        command,
        "```",
        "",
        *rows,
        "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=9000, help="slow connections (RLIMIT_NOFILE >= 2 x conns + 300)")
    ap.add_argument("--head-timeout", type=float, default=10.0, help="seconds")
    ap.add_argument("--interval", default="2-3", help="seconds between a slow client's bytes")
    ap.add_argument("--rate", type=float, default=2500.0, help="slow connections opened per second")
    ap.add_argument("--baseline", type=int, default=300, help="healthy rounds before the attack")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds between healthy rounds")
    ap.add_argument("--proxies", nargs="+", choices=("wsproxy", "haproxy"), default=["wsproxy", "haproxy"])
    ap.add_argument("--append", type=Path, help="append the markdown section to this file")
    args = ap.parse_args()
    nofile = raise_nofile()
    if nofile < 2 * (args.conns + 100) + 100:  # HAProxy's maxconn must cover them all
        raise SystemExit(f"RLIMIT_NOFILE {nofile} is too low for {args.conns} slow connections "
                         f"(HAProxy needs 2 fds per maxconn)")
    tools = {"taskset": find_tool("taskset"), "haproxy": find_tool("haproxy")}
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = []
    with tempfile.TemporaryDirectory(prefix="slowloris-") as tmp:
        for name in args.proxies:
            if name == "haproxy" and not tools["haproxy"]:
                print("HAProxy is not installed: skipped", file=sys.stderr)
                continue
            print(f"{name}: {args.conns} slow connections...", file=sys.stderr, flush=True)
            results.append(run_one(name, args, Path(tmp), nofile, tools))
    command = "python benchmarks/slowloris.py " + " ".join(sys.argv[1:])
    section = render(results, args, command.strip(), load)
    print(section)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
