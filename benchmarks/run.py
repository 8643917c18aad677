#!/usr/bin/env python3
"""wsproxy's benchmark suite (issue #4): one command, every proxy, the same load, medians.

    python benchmarks/run.py                         # full run (~13 min), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick                 # 1 repeat, short windows (~2 min), prints only
    python benchmarks/run.py --cases pingpong100 handshake --proxies haproxy wsproxy-track
    python benchmarks/run.py --repeat 5 --out /tmp/results.md
    python benchmarks/run.py --self-check            # ~15 s: does the harness work here?
    python benchmarks/run.py --compare A.json B.json # how far two runs' ratios moved (noise)

What it starts (see benchmarks/README.md for how to read the output):
- the echo member (benchmarks/echo_member.py, picows) and the load client
  (benchmarks/load.py, picows), both pinned to CPU 1;
- one proxy at a time, pinned to CPU 0: wsproxy (1 worker, ``python -m wsproxy -c``,
  relay raw / track / inspect, C build and pure build), HAProxy (nbthread 1) and NGINX
  (1 worker) when installed, with the configs in benchmarks/configs/; and "direct" (the
  load client talks to the member itself: the ceiling of this client and member).

Every case runs ``--repeat`` times (default 5; the idle case at most 3) per proxy, the
proxies interleaved, and the table gives medians. Proxy CPU is utime+stime of every
process of the proxy (its process group) from /proc over the measurement window; RSS is
VmRSS summed the same way.
Raw per-repeat results go to reports/bench/<stamp>.json (gitignored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = HERE / "configs"
REPORTS = ROOT / "reports" / "bench"
PY = sys.executable
PROXY_CPU, LOAD_CPU = "0", "1"

sys.path.insert(0, str(HERE))
import procstat  # noqa: E402


# ----------------------------------------------------------------------------- what runs

@dataclass(frozen=True)
class Variant:
    id: str            # --proxies name
    label: str         # column header
    kind: str          # direct | wsproxy | haproxy | nginx
    relay: str = ""    # wsproxy: raw | track | inspect
    build: str = "c"   # wsproxy: c | py (WSPROXY_NO_EXTENSIONS=1)
    extra: str = ""    # wsproxy: TOML appended to the generated conf
    na: str = ""       # set: listed in the table as this text, never run


NOOP_PLUGIN = f'[[plugins]]\npath = "{CONFIGS / "noop.lua"}"\n'
NOOP_PY_PLUGIN = f'[[plugins]]\npath = "{CONFIGS / "noop.py"}"\n'
READ_PLUGIN = f'[[plugins]]\npath = "{CONFIGS / "read.lua"}"\n'

VARIANTS = [
    Variant("direct", "direct", "direct"),
    Variant("haproxy", "HAProxy", "haproxy"),
    Variant("nginx", "NGINX", "nginx"),
    Variant("wsproxy-track", "wsproxy track", "wsproxy", "track"),
    Variant("wsproxy-raw", "wsproxy raw", "wsproxy", "raw"),
    Variant("wsproxy-inspect", "wsproxy inspect (no-op Lua WS_FRAME)", "wsproxy", "inspect", extra=NOOP_PLUGIN),
    Variant("wsproxy-inspect-py", "wsproxy inspect (no-op Python WS_FRAME)", "wsproxy", "inspect", extra=NOOP_PY_PLUGIN),
    Variant("wsproxy-inspect-read", "wsproxy inspect (Lua WS_MESSAGE reads payload)", "wsproxy", "inspect",
            extra=READ_PLUGIN),
    Variant("wsproxy-track-pure", "wsproxy track (pure)", "wsproxy", "track", build="py"),
    Variant("wsproxy-raw-pure", "wsproxy raw (pure)", "wsproxy", "raw", build="py"),
]
VARIANT_BY_ID = {v.id: v for v in VARIANTS}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple            # load.py arguments
    quick_args: tuple = ()  # overrides in --quick
    max_repeats: int = 0   # run in at most this many repeats (0: all)


CASES = [
    Case("pingpong1", ("pingpong", "--conns", "1", "--size", "64")),
    Case("pingpong100", ("pingpong", "--conns", "100", "--size", "64")),
    # 4 connections: one connection's throughput swings with its socket-buffer autotuning
    # (HAProxy's ms/GB moved 550..1250 from run to run with 1 connection; 4 steady it).
    Case("bulk64k", ("bulk", "--conns", "4", "--size", "65536", "--inflight", "4")),
    Case("bulk1m", ("bulk", "--conns", "4", "--size", "1048576", "--inflight", "1")),
    Case("handshake", ("handshake", "--concurrency", "32")),
    # RSS growth moves by under 1% between repeats: 3 are plenty, and each takes ~8 s
    Case("idle", ("idle", "--conns", "9000"), ("--conns", "2000"), max_repeats=3),
]
CASE_BY_ID = {c.id: c for c in CASES}


@dataclass(frozen=True)
class Figure:
    case: str
    field: str
    label: str
    better: str           # "higher" | "lower"
    fmt: str = "{:,.1f}"
    proxy_only: bool = False  # n/a for "direct"


FIGURES = [
    Figure("pingpong1", "rate", "64 B ping-pong, 1 conn: round trips/s", "higher", "{:,.0f}"),
    Figure("pingpong1", "p50_us", "64 B ping-pong, 1 conn: p50 latency, µs", "lower"),
    Figure("pingpong1", "p99_us", "64 B ping-pong, 1 conn: p99 latency, µs", "lower"),
    Figure("pingpong1", "cpu_us_per_op", "64 B ping-pong, 1 conn: proxy µs CPU per round trip", "lower", proxy_only=True),
    Figure("pingpong100", "rate", "64 B ping-pong, 100 conns: round trips/s", "higher", "{:,.0f}"),
    Figure("pingpong100", "p50_us", "64 B ping-pong, 100 conns: p50 latency, µs", "lower", "{:,.0f}"),
    Figure("pingpong100", "p99_us", "64 B ping-pong, 100 conns: p99 latency, µs", "lower", "{:,.0f}"),
    Figure("pingpong100", "cpu_us_per_op", "64 B ping-pong, 100 conns: proxy µs CPU per round trip", "lower", proxy_only=True),
    Figure("bulk64k", "mb_per_s", "64 KiB messages: MB/s echoed", "higher", "{:,.0f}"),
    Figure("bulk64k", "cpu_ms_per_gb", "64 KiB messages: proxy ms CPU per GB relayed", "lower", "{:,.0f}", proxy_only=True),
    Figure("bulk1m", "mb_per_s", "1 MiB messages: MB/s echoed", "higher", "{:,.0f}"),
    Figure("bulk1m", "cpu_ms_per_gb", "1 MiB messages: proxy ms CPU per GB relayed", "lower", "{:,.0f}", proxy_only=True),
    Figure("handshake", "rate", "handshakes/s (connect, upgrade, Close, TCP close)", "higher", "{:,.0f}"),
    Figure("handshake", "cpu_us_per_op", "handshake: proxy µs CPU per handshake", "lower", "{:,.0f}", proxy_only=True),
    Figure("idle", "kib_per_conn", "idle proxied WebSocket: proxy RSS KiB per connection", "lower", "{:,.1f}", proxy_only=True),
]

# Issue #4 targets: (label, variant, case, field, kind, limit). kind "ratio": value/HAProxy
# at most limit; "abs": value at most limit; "micro": C speed-up at least limit.
TARGETS = [
    ("µs CPU per 64 B round trip, 100 conns, track mode", "wsproxy-track", "pingpong100", "cpu_us_per_op", "ratio", 1.2),
    ("ms CPU per GB, 64 KiB messages", "wsproxy-track", "bulk64k", "cpu_ms_per_gb", "ratio", 1.0),
    ("ms CPU per GB, 1 MiB messages", "wsproxy-track", "bulk1m", "cpu_ms_per_gb", "ratio", 1.0),
    ("µs CPU per handshake", "wsproxy-track", "handshake", "cpu_us_per_op", "ratio", 1.5),
    ("p99 latency, 100 conns", "wsproxy-track", "pingpong100", "p99_us", "ratio", 1.5),
    ("RSS per idle proxied WebSocket (KiB)", "wsproxy-track", "idle", "kib_per_conn", "abs", 8.0),
    ("inspect mode, no-op Lua frame hook: µs CPU per round trip", "wsproxy-inspect", "pingpong100", "cpu_us_per_op", "ratio", 2.0),
]


# ----------------------------------------------------------------------------- processes

def _child_setup():
    """In each child: own session (one process group per proxy), die with the harness."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None)


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd=None):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as f:
            f.write(f"\n$ {shlex.join(argv)}\n".encode())
            f.flush()
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                      preexec_fn=_child_setup, env=env, cwd=cwd)
        self.pgid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.p.poll() is not None:
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the rest of the group (an nginx worker whose master died first)
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class HarnessError(Exception):
    pass


def fill(template: str, **values) -> str:
    return string.Template((CONFIGS / template).read_text()).substitute(**values)


class Bench:
    def __init__(self, args, tmp: Path):
        self.a = args
        self.tmp = tmp
        self.nofile = raise_nofile()
        self.member: Proc | None = None
        self.member_port = 0
        self.prlimit = find_tool("prlimit")
        self.taskset = find_tool("taskset")
        self.haproxy = find_tool("haproxy")
        self.nginx = find_tool("nginx")
        self.src = None
        self.digest = ""
        if getattr(args, "src", None):
            self.src = Path(args.src).resolve()
            if not (self.src / "wsproxy" / "__init__.py").exists():
                raise HarnessError(f"--src {args.src}: no wsproxy/ package there")
            self.digest = tree_digest(self.src)
        elif not getattr(args, "live_tree", False):
            self.src, self.digest = snapshot_tree(tmp / "src")

    def py_env(self, **extra) -> dict:
        """Environment of every wsproxy (and micro.py) process: the snapshot first on the path."""
        env = dict(os.environ)
        env.pop("WSPROXY_NO_EXTENSIONS", None)
        if self.src is not None:
            env["PYTHONPATH"] = str(self.src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(extra)
        return env

    # -- pinning
    def pinned(self, cpu: str, argv: list[str]) -> list[str]:
        return [self.taskset, "-c", cpu, *argv] if self.taskset and not self.a.no_pin else argv

    def limited(self, argv: list[str]) -> list[str]:
        if self.prlimit:
            return [self.prlimit, f"--nofile={self.nofile}:{self.nofile}", *argv]
        return ["bash", "-c", f'ulimit -n {self.nofile}; exec "$@"', "bash", *argv]

    # -- member
    def start_member(self) -> None:
        port = free_port()
        self.member = Proc("member", self.pinned(LOAD_CPU, [PY, str(HERE / "echo_member.py"), "--port", str(port)]),
                           self.tmp / "member.log")
        self.member_port = port
        self._wait_port(self.member, port)

    def _wait_port(self, proc: Proc, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise HarnessError(f"{proc.name} exited (code {proc.p.returncode}):\n{proc.tail()}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise HarnessError(f"{proc.name} did not listen on {port} within {timeout:.0f} s:\n{proc.tail()}")

    # -- proxies
    def available(self, v: Variant) -> str:
        """'' when the variant can run here, else why not."""
        if v.na:
            return v.na
        if v.kind == "haproxy" and not self.haproxy:
            return "n/a (not installed)"
        if v.kind == "nginx" and not self.nginx:
            return "n/a (not installed)"
        return ""

    def start_proxy(self, v: Variant) -> tuple[Proc | None, int]:
        """Start the proxy of ``v``; returns (process or None for direct, port to load)."""
        if v.kind == "direct":
            return None, self.member_port
        port = free_port()
        d = self.tmp / v.id
        d.mkdir(exist_ok=True)
        env = None
        maxconn = max(1000, (self.nofile - 200) // 2)
        if v.kind == "wsproxy":
            conf = d / "site.conf"
            conf.write_text(fill("wsproxy.conf", port=port, member_port=self.member_port, relay=v.relay, extra=v.extra))
            argv = [PY, "-m", "wsproxy", "-c", str(conf), "--log-level", "warning"]
            env = self.py_env(**({"WSPROXY_NO_EXTENSIONS": "1"} if v.build == "py" else {}))
        elif v.kind == "haproxy":
            conf = d / "haproxy.cfg"
            conf.write_text(fill("haproxy.cfg", port=port, member_port=self.member_port, maxconn=maxconn))
            argv = [self.haproxy, "-db", "-f", str(conf)]
        elif v.kind == "nginx":
            conf = d / "nginx.conf"
            conf.write_text(fill("nginx.conf", port=port, member_port=self.member_port, dir=d,
                                 nofile=self.nofile, worker_connections=self.nofile - 100))
            argv = [self.nginx, "-p", str(d), "-e", str(d / "nginx-error.log"), "-c", str(conf)]
        else:
            raise ValueError(v.kind)
        proc = Proc(v.id, self.pinned(PROXY_CPU, self.limited(argv)), self.tmp / f"{v.id}.log", env=env, cwd=d)
        self._wait_port(proc, port)
        if v.kind == "nginx":  # the worker, not just the master, must be up
            deadline = time.monotonic() + 10
            while len(procstat.group_pids(proc.pgid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        return proc, port

    # -- load
    def wait_quiet(self, what: str = "") -> bool:
        """Wait (up to --quiet-timeout) for 2 s in a row in which the machine's other
        processes use under 5% of a core. Ours are idle meanwhile."""
        deadline = time.monotonic() + self.a.quiet_timeout
        calm = 0
        told = False
        while True:
            s0 = procstat.system_cpu()
            time.sleep(1.0)
            busy = procstat.system_cpu()["tasks"] - s0["tasks"]
            calm = calm + 1 if busy < 0.05 else 0
            if calm >= 2:
                return True
            if time.monotonic() > deadline:
                log(f"run.py: the machine is still busy ({100 * busy:.0f}% of a core in other processes); going on")
                return False
            if not told:
                log(f"run.py: other processes are using {100 * busy:.0f}% of a core: waiting for quiet {what}".rstrip())
                told = True

    def load(self, case: Case, port: int, proxy: Proc | None, extra: tuple = ()) -> dict:
        """Run one case; a window that other processes disturbed is run again (--retries)."""
        for attempt in range(1 + max(0, self.a.retries)):
            r = self._load_once(case, port, proxy, extra)
            busy = other_share(r)
            if "error" in r or busy is None or busy <= self.a.max_other:
                break
            if attempt < self.a.retries:
                log(f"run.py: other processes used {100 * busy:.0f}% of a core during {case.id}: "
                    "waiting for quiet, then running it again")
                self.wait_quiet()
        r["attempts"] = attempt + 1
        if busy is not None and busy > self.a.max_other:
            w = f"other processes used {100 * busy:.0f}% of a core during the window"
            r["warning"] = f"{r['warning']}; {w}" if r.get("warning") else w
        return r

    def _load_once(self, case: Case, port: int, proxy: Proc | None, extra: tuple = ()) -> dict:
        a = self.a
        args = list(case.args)
        if a.quick and case.quick_args:
            args += list(case.quick_args)
        if case.id == "idle" and a.idle_conns:
            args += ["--conns", str(a.idle_conns)]
        argv = [PY, str(HERE / "load.py"), *args, "--url", f"ws://127.0.0.1:{port}/",
                "--duration", str(a.duration), "--warmup", str(a.warmup),
                "--member-pid", str(self.member.p.pid), "--proxy-pgid", str(proxy.pgid if proxy else 0), *extra]
        return self._run_client(argv, "load.py", proxy)

    def _run_client(self, argv: list[str], name: str, proxy: Proc | None) -> dict:
        """Run a load client (pinned to the load CPU) and return its last JSON line, with
        ``error`` set when it failed, timed out or the proxy died meanwhile."""
        a = self.a
        argv = self.pinned(LOAD_CPU, argv)
        budget = 120 + (a.duration + a.warmup) * 2
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            return {"error": f"{name} timed out after {budget:.0f} s"}
        lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
        if cp.returncode != 0 or not lines:
            return {"error": f"{name} exit {cp.returncode}: {cp.stderr.strip()[-600:]}"}
        r = json.loads(lines[-1])
        if proxy is not None and not proxy.alive():
            r["error"] = f"proxy died: {proxy.tail(10)}"
        if r.get("errors"):
            r.setdefault("warning", f"{r['errors']} failed operations ({r.get('first_error')})")
        return r


# ----------------------------------------------------------------------------- the run

def other_share(r: dict) -> float | None:
    """Share of a core that other processes of the machine used during the window."""
    if r.get("other_cpu_s") is None or not r.get("window_s"):
        return None
    return r["other_cpu_s"] / r["window_s"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def brief(case: str, r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:300]
    cpu = r.get("cpu_us_per_op")
    bits = []
    if case.startswith("pingpong"):
        bits = [f"{r['rate']:,.0f} rt/s", f"p50 {r['p50_us']:,.0f} µs", f"p99 {r['p99_us']:,.0f} µs"]
    elif case.startswith("bulk"):
        bits = [f"{r['mb_per_s']:,.0f} MB/s"]
        cpu = None
        if r.get("cpu_ms_per_gb") is not None:
            bits.append(f"{r['cpu_ms_per_gb']:,.0f} ms CPU/GB")
    elif case == "handshake":
        bits = [f"{r['rate']:,.0f} hs/s"]
    elif case == "idle":
        bits = [f"{r['conns']} conns", f"{r['kib_per_conn']:.1f} KiB/conn" if r.get("kib_per_conn") is not None else "",
                f"{r['fds_per_conn']:.2f} fds/conn" if r.get("fds_per_conn") is not None else "",
                f"opened in {r['open_s']:.1f} s"]
    if cpu is not None:
        bits.append(f"{cpu:,.1f} µs CPU/op")
    w = r.get("window_s")
    if w and r.get("proxy_cpu_s") is not None:
        bits.append(f"proxy core {100 * r['proxy_cpu_s'] / w:.0f}%")
    if w and r.get("member_cpu_s") is not None:
        bits.append(f"client core {100 * (r['member_cpu_s'] + r['client_cpu_s']) / w:.0f}%")
    o = other_share(r)
    if o is not None and o > 0.02:
        bits.append(f"other processes {100 * o:.0f}%")
    if r.get("attempts", 1) > 1:
        bits.append(f"attempt {r['attempts']}")
    if r.get("warning"):
        bits.append("WARNING " + r["warning"][:200])
    return ", ".join(b for b in bits if b)


def run_suite(bench: Bench, variants: list[Variant], cases: list[Case]) -> dict:
    a = bench.a
    results: dict = {v.id: {c.id: [] for c in cases} for v in variants}
    runnable = [v for v in variants if not bench.available(v)]
    flow = [c for c in cases if c.id != "idle"]
    idle = [c for c in cases if c.id == "idle"]
    for rep in range(a.repeat):
        order = runnable[rep % len(runnable):] + runnable[:rep % len(runnable)] if runnable else []
        for v in order:
            for group in (flow, idle):  # the idle case gets a fresh proxy: no memory left by the others
                group = [c for c in group if not c.max_repeats or rep < c.max_repeats]
                if not group:
                    continue
                proxy, port = bench.start_proxy(v)
                try:
                    for c in group:
                        if c.id == "idle" and v.kind == "direct":
                            continue
                        r = bench.load(c, port, proxy)
                        r["repeat"] = rep
                        results[v.id][c.id].append(r)
                        log(f"[{rep + 1}/{a.repeat}] {v.label:22} {c.id:12} {brief(c.id, r)}")
                finally:
                    if proxy is not None:
                        proxy.stop(grace=3.0)
    return results


PROFILE_LOADS = {
    "pingpong100": (("pingpong", "--conns", "100", "--size", "64"), "100 connections, 64 B ping-pong"),
    "handshake": (("handshake", "--concurrency", "32"), "handshakes, 32 at a time"),
}


def run_profile(bench: Bench, seconds: float, case: str) -> dict:
    """py-spy on wsproxy track (C build) under one load of PROFILE_LOADS."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not os.access(pyspy, os.X_OK):
        return {"error": "py-spy not installed (pip install py-spy)"}
    load_args, title = PROFILE_LOADS[case]
    v = VARIANT_BY_ID["wsproxy-track"]
    proxy, port = bench.start_proxy(v)
    out = bench.tmp / f"profile-{case}.raw"
    lout = ""
    try:
        load_argv = bench.pinned(LOAD_CPU, [PY, str(HERE / "load.py"), *load_args,
                                            "--url", f"ws://127.0.0.1:{port}/", "--warmup", "1",
                                            "--duration", str(seconds + 2), "--proxy-pgid", str(proxy.pgid),
                                            "--member-pid", str(bench.member.p.pid)])
        lp = subprocess.Popen(load_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        spy = subprocess.run(bench.pinned(LOAD_CPU, [pyspy, "record", "--pid", str(proxy.p.pid), "--native",
                                                     "-r", "200", "-d", str(int(seconds)), "-f", "raw",
                                                     "-o", str(out)]),
                             capture_output=True, text=True, timeout=seconds + 60)
        lout, _ = lp.communicate(timeout=seconds + 60)
    finally:
        proxy.stop(grace=3.0)
    if spy.returncode != 0 or not out.exists():
        return {"error": f"py-spy exit {spy.returncode}: {spy.stderr.strip()[-400:]}", "title": title}
    REPORTS.mkdir(parents=True, exist_ok=True)
    kept = REPORTS / time.strftime(f"profile-{case}-%Y%m%d-%H%M%S.raw", time.gmtime())
    shutil.copyfile(out, kept)
    prof = summarize_profile(out.read_text())
    prof["title"] = title
    prof["raw_file"] = str(kept.relative_to(ROOT))
    prof["command"] = f"py-spy record --pid <wsproxy pid> --native -r 200 -d {int(seconds)} -f raw"
    try:
        prof["load"] = json.loads([ln for ln in lout.splitlines() if ln.startswith("{")][-1])
    except Exception:
        pass
    return prof


SYSCALLS_TRACKED = ("read", "write", "recvfrom", "sendto", "readv", "writev", "recvmsg", "sendmsg",
                    "epoll_wait", "epoll_pwait", "epoll_ctl", "accept4", "connect", "shutdown", "close",
                    "socket", "setsockopt", "getsockopt", "getsockname", "getpeername", "getpid", "splice")


def _tracepoints() -> list[str]:
    for base in ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"):
        if os.path.isdir(f"{base}/raw_syscalls/sys_enter"):
            return ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in SYSCALLS_TRACKED
                                                 if os.path.isdir(f"{base}/syscalls/sys_enter_{n}")]
    return []


def run_syscalls(bench: Bench, case: str, variant_ids: list[str], seconds: float = 3.0) -> dict:
    """Syscalls per unit of work of each proxy (``perf stat`` on syscall tracepoints)."""
    perf = find_tool("perf")
    events = _tracepoints()
    if not perf or not events:
        return {"error": "perf or the syscall tracepoints are not available"}
    load_args, _title = PROFILE_LOADS[case]
    out: dict = {}
    for vid in variant_ids:
        v = VARIANT_BY_ID[vid]
        if bench.available(v) or v.kind == "direct":
            continue
        proxy, port = bench.start_proxy(v)
        try:
            lp = subprocess.Popen(bench.pinned(LOAD_CPU, [PY, str(HERE / "load.py"), *load_args,
                                                          "--url", f"ws://127.0.0.1:{port}/", "--warmup", "1",
                                                          "--duration", str(seconds + 0.6),
                                                          "--proxy-pgid", str(proxy.pgid)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1.3)
            pids = ",".join(str(p) for p in procstat.group_pids(proxy.pgid))
            cp = subprocess.run(bench.pinned(LOAD_CPU, [perf, "stat", "-x,", "-e", ",".join(events), "-p", pids,
                                                        "--", "sleep", str(seconds)]),
                                capture_output=True, text=True, timeout=seconds + 30)
            lout, _ = lp.communicate(timeout=seconds + 60)
        finally:
            proxy.stop(grace=3.0)
        try:
            r = json.loads([ln for ln in lout.splitlines() if ln.startswith("{")][-1])
            per_s = r["count"] / r["window_s"]
        except Exception:
            out[vid] = {"error": "load failed"}
            continue
        counts = {}
        for line in cp.stderr.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[0].strip().isdigit():
                name = f[2].split(":")[-1].replace("sys_enter_", "")
                counts["total" if name == "sys_enter" else name] = int(f[0]) / seconds / per_s
        out[vid] = {"per_op": counts, "cpu_us_per_op": r.get("cpu_us_per_op")}
    return out


_FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    """'feed (wsproxy/proxy/relay.py:123)' -> 'feed (wsproxy/proxy/relay.py)'; native frames as is."""
    m = _FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    f = f.replace(str(ROOT) + "/", "")
    return f"{m.group('fn')} ({f})"


def summarize_profile(raw: str, top: int = 15) -> dict:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")] or frames
        total += n
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + n
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + n
    def topn(d):
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]] if total else []
    # wsproxy frames by inclusive share, minus the entry frames every sample has
    ws_incl = {k: v for k, v in incl_counts.items() if "wsproxy/" in k and v < 0.99 * total}
    cats: dict[str, int] = {}
    for leaf, n in self_counts.items():
        c = _category(leaf)
        cats[c] = cats.get(c, 0) + n
    return {"samples": total, "self": topn(self_counts), "inclusive": topn(incl_counts),
            "wsproxy_inclusive": topn(ws_incl), "categories": topn(cats)}


_SYSCALLS = {"read", "write", "writev", "readv", "send", "recv", "sendmsg", "recvmsg", "sendto", "recvfrom",
             "epoll_wait", "epoll_pwait", "epoll_ctl", "accept", "accept4", "connect", "close", "shutdown",
             "setsockopt", "getsockopt", "getsockname", "getpeername", "socket", "ioctl", "fcntl", "__libc_write",
             "__libc_read", "__GI___libc_write", "__GI___libc_read", "syscall"}


def _category(leaf: str) -> str:
    fn, _, where = leaf.partition(" (")
    where = where.rstrip(")")
    if "libc.so" in where and fn in _SYSCALLS:
        return f"kernel, entered through libc {'epoll' if 'epoll' in fn else fn}()"
    if "_ext" in where or where.endswith(".pyx"):
        return "wsproxy C accelerators (wsproxy._ext)"
    if "wsproxy/" in where:
        return "wsproxy Python code (self time of its own lines)"
    if "uvloop" in where or where.startswith("loop.") or "libuv" in where or where.startswith("uv"):
        return "uvloop / libuv"
    if "httptools" in where:
        return "httptools"
    if "libc.so" in where:
        return "libc (other: malloc, memcpy, ...)"
    return "CPython runtime and other native code"


def run_micro(bench: Bench) -> dict:
    argv = bench.pinned(PROXY_CPU, [PY, str(HERE / "micro.py"), "--json"] + (["--quick"] if bench.a.quick else []))
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=bench.py_env())
    try:
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except Exception:
        return {"error": f"micro.py exit {cp.returncode}: {cp.stderr[-400:]}"}


# ----------------------------------------------------------------------------- the report

def median_of(runs: list[dict], field: str):
    vals = [r[field] for r in runs if "error" not in r and r.get(field) is not None]
    return statistics.median(vals) if vals else None


def spread_of(runs: list[dict], field: str):
    vals = [r[field] for r in runs if "error" not in r and r.get(field) is not None]
    if len(vals) < 2:
        return None
    med = statistics.median(vals)
    return (max(vals) - min(vals)) / med if med else None


def medians(results: dict) -> dict:
    return {vid: {f"{f.case}.{f.field}": median_of(cases.get(f.case, []), f.field) for f in FIGURES}
            for vid, cases in results.items()}


def fmt_ratio(x: float | None) -> str:
    return f"{x:.2f}×" if x is not None else ""


def ratio(med: dict, vid: str, key: str) -> float | None:
    v = med.get(vid, {}).get(key)
    h = med.get("haproxy", {}).get(key)
    if v is None or not h:
        return None
    return v / h


def render(doc: dict) -> str:
    variants = [VARIANT_BY_ID[v] for v in doc["variants"]]
    results = doc["results"]
    med = medians(results)
    na = doc["na"]
    cases = set(doc["cases"])
    figs = [f for f in FIGURES if f.case in cases]
    L = []
    L.append("| figure | " + " | ".join(v.label for v in variants) + " |")
    L.append("|---|" + "---:|" * len(variants))
    for f in figs:
        key = f"{f.case}.{f.field}"
        cells = []
        for v in variants:
            if v.id in na:
                cells.append(na[v.id])
                continue
            if f.proxy_only and v.kind == "direct":
                cells.append("–")
                continue
            val = med[v.id][key]
            if val is None:
                errs = [r.get("error") for r in results[v.id].get(f.case, []) if "error" in r]
                cells.append("error" if errs else "–")
                continue
            cell = f.fmt.format(val)
            if v.id != "haproxy":
                r = ratio(med, v.id, key)
                if r is not None:
                    cell += f" ({fmt_ratio(r)})"
            cells.append(cell)
        arrow = "↑" if f.better == "higher" else "↓"
        L.append(f"| {f.label} {arrow} | " + " | ".join(cells) + " |")
    table = "\n".join(L)

    # targets
    T = ["| target (wsproxy 1 worker vs HAProxy 1 thread, same run) | limit | measured | verdict |",
         "|---|---:|---:|---|"]
    for label, vid, case, fld, kind, limit in doc.get("targets", TARGETS):
        if case not in cases:
            continue
        key = f"{case}.{fld}"
        if vid in na:
            T.append(f"| {label} | ≤ {limit:g}× | {na[vid]} | not measured |")
            continue
        if kind == "ratio":
            r = ratio(med, vid, key)
            if r is None:
                T.append(f"| {label} | ≤ {limit:g}× | n/a | not measured |")
                continue
            verdict = "met" if r <= limit else f"missed by {r / limit:.2f}× ({r:.2f}× vs ≤ {limit:g}×)"
            T.append(f"| {label} | ≤ {limit:g}× | {r:.2f}× | {verdict} |")
        elif kind == "abs":
            val = med.get(vid, {}).get(key)
            if val is None:
                T.append(f"| {label} | ≤ {limit:g} | n/a | not measured |")
                continue
            verdict = "met" if val <= limit else f"missed by {val / limit:.2f}× ({val:.1f} vs ≤ {limit:g})"
            T.append(f"| {label} | ≤ {limit:g} | {val:.1f} | {verdict} |")
    micro = doc.get("micro") or {}
    for r in micro.get("rows", []):
        if not r.get("target", True):
            continue  # informative rows (head glue, builders): in the micro table only
        s = r.get("speedup")
        verdict = "n/a" if s is None else ("met" if s >= 10 else f"missed ({s:.1f}× vs ≥ 10×)")
        T.append(f"| C vs pure: {r['name']} | ≥ 10× | {fmt_ratio(s) or 'n/a'} | {verdict} |")
    targets = "\n".join(T)

    # raw mode beside track for the CPU targets
    extra = []
    for vid in ("wsproxy-raw", "wsproxy-track-pure", "wsproxy-raw-pure"):
        if vid in na or vid not in med:
            continue
        parts = []
        for label, tvid, case, fld, kind, limit in TARGETS:
            if tvid != "wsproxy-track" or case not in cases:
                continue
            key = f"{case}.{fld}"
            label = label.replace(", track mode", "")
            if kind == "ratio":
                r = ratio(med, vid, key)
                if r is not None:
                    parts.append(f"{label}: {r:.2f}×")
            elif med[vid].get(key) is not None:
                parts.append(f"{label}: {med[vid][key]:.1f}")
        if parts:
            extra.append(f"- {VARIANT_BY_ID[vid].label}: " + "; ".join(parts))

    # cores: is the client side saturated?
    C = ["| case | " + " | ".join(v.label for v in variants if v.id not in na) + " |",
         "|---|" + "---:|" * len([v for v in variants if v.id not in na])]
    for c in [c for c in CASES if c.id in cases and c.id != "idle"]:
        cells = []
        for v in variants:
            if v.id in na:
                continue
            runs = [r for r in results[v.id].get(c.id, []) if "error" not in r and r.get("window_s")]
            if not runs:
                cells.append("–")
                continue
            pc = [r["proxy_cpu_s"] / r["window_s"] for r in runs if r.get("proxy_cpu_s") is not None]
            ks = [r["proxy_sys_s"] / r["proxy_cpu_s"] for r in runs if r.get("proxy_sys_s") is not None and r.get("proxy_cpu_s")]
            cc = [(r["member_cpu_s"] + r["client_cpu_s"]) / r["window_s"] for r in runs if r.get("member_cpu_s") is not None]
            p = f"{100 * statistics.median(pc):.0f}%" if pc else "–"
            if ks:
                p += f" ({100 * statistics.median(ks):.0f}% sys)"
            q = f"{100 * statistics.median(cc):.0f}%" if cc else "–"
            cells.append(f"{p} / {q}")
        C.append(f"| {c.id} | " + " | ".join(cells) + " |")
    cores = "\n".join(C)

    # spread
    S = ["| figure | " + " | ".join(v.label for v in variants if v.id not in na) + " |",
         "|---|" + "---:|" * len([v for v in variants if v.id not in na])]
    for f in figs:
        cells = []
        for v in variants:
            if v.id in na:
                continue
            s = spread_of(results[v.id].get(f.case, []), f.field)
            cells.append(f"{100 * s:.0f}%" if s is not None else "–")
        S.append(f"| {f.label} | " + " | ".join(cells) + " |")
    spread = "\n".join(S)

    problems = []
    for vid, cs in results.items():
        for cid, runs in cs.items():
            for r in runs:
                if "error" in r:
                    problems.append(f"- {VARIANT_BY_ID[vid].label} / {cid} (repeat {r.get('repeat', 0) + 1}): {r['error'][:300]}")
                elif r.get("warning"):
                    problems.append(f"- {VARIANT_BY_ID[vid].label} / {cid} (repeat {r.get('repeat', 0) + 1}): {r['warning'][:300]}")

    m = doc["machine"]
    out = [
        "# wsproxy benchmark results",
        "",
        f"Generated by `benchmarks/run.py` on {doc['date']} ({doc['elapsed_s'] / 60:.1f} min). "
        "How to read it: benchmarks/README.md.",
        "",
        "```",
        doc["command"],
        "```",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        f"- pinning: proxy on CPU {PROXY_CPU}; load client and echo member on CPU {LOAD_CPU}"
        + (" (taskset)" if not doc.get("no_pin") else " (NOT pinned: --no-pin)"),
        f"- repeats: {doc['repeat']} per case and proxy (idle: at most 3), proxies interleaved; medians below; "
        f"window {doc['duration']:g} s after {doc['warmup']:g} s of warm-up",
        "",
        "## Results (median; in brackets the ratio to HAProxy in the same run)",
        "",
        "↑ higher is better, ↓ lower is better. Proxy CPU = utime+stime of all the proxy's processes "
        "over the window, from /proc/PID/stat. 'direct' = client to echo member, no proxy.",
        "",
        table,
        "",
        "## Targets of issue #4",
        "",
        targets,
        "",
    ]
    if extra:
        out += ["The same figures for the other wsproxy variants (ratio to HAProxy):", "", *extra, ""]
    if doc.get("notes"):
        out += ["## Notes", "", doc["notes"].strip(), ""]
    if micro.get("rows"):
        sys.path.insert(0, str(HERE))
        from micro import format_rows

        out += ["## C build against the pure build (benchmarks/micro.py, one process, CPU 0)", "",
                format_rows(micro["rows"]), ""]
    elif micro.get("error"):
        out += ["## C build against the pure build", "", f"micro.py failed: {micro['error']}", ""]
    out += ["## Core use over the window: proxy core (kernel share of it) / client core (client + member)", "",
            "A client core near 100% means the load side, not the proxy, set the pace: compare CPU "
            "per unit of work, not throughput, then. The kernel share is stime / (utime + stime) of "
            "the proxy: the part no user-space change can remove, only fewer syscalls.", "", cores, ""]
    if doc["repeat"] > 1:
        out += ["## Spread across repeats ((max − min) / median)", "", spread, ""]
    profs = doc.get("profile") or {}
    if "samples" in profs or "error" in profs and "title" not in profs:  # one profile (older runs)
        profs = {"pingpong100": {"title": "100 connections, 64 B ping-pong", **profs}}
    for case, prof in profs.items():
        out += [f"## Profile: wsproxy track (C build), {prof.get('title', case)}", ""]
        if prof.get("error"):
            out += [f"py-spy failed: {prof['error']}", ""]
            continue
        ld = prof.get("load") or {}
        if ld.get("proxy_cpu_s"):
            out += [f"During the profile the proxy used {100 * ld['proxy_cpu_s'] / ld['window_s']:.0f}% of its core, "
                    f"{100 * ld['proxy_sys_s'] / ld['proxy_cpu_s']:.0f}% of that in the kernel (stime, /proc; "
                    "py-spy's sampling under-counts user-space time between syscalls, so read its "
                    "shares of user-space frames as a ranking).", ""]
        out += [f"`{prof['command']}` while the load runs: {prof['samples']} samples (busy time "
                "only; time blocked in epoll is mostly not sampled). Native frames are C (uvloop, "
                "CPython, wsproxy._ext); time in the kernel shows as the libc wrapper that entered it. "
                f"Raw stacks: `{prof.get('raw_file', '?')}`.", ""]
        if prof.get("categories"):
            out += ["Where the samples end (self time by kind of code):", "", "| share | kind |", "|---:|---|"]
            out += [f"| {100 * s:.1f}% | {k} |" for k, s in prof["categories"]]
            out += [""]
        out += ["Self time, top frames (the frame on top of the stack):", "", "| share | frame |", "|---:|---|"]
        out += [f"| {100 * s:.1f}% | `{k}` |" for k, s in prof["self"]]
        out += ["", "Inclusive time, wsproxy's own Python frames:", "", "| share | frame |", "|---:|---|"]
        out += [f"| {100 * s:.1f}% | `{k}` |" for k, s in prof["wsproxy_inclusive"]]
        out += [""]
    sc = doc.get("syscalls") or {}
    if sc:
        out += ["## Syscalls per operation (perf stat on syscall tracepoints, same loads as the profiles)", ""]
        for case, per in sc.items():
            if per.get("error"):
                out += [f"{case}: {per['error']}", ""]
                continue
            vids = [v for v in per if "per_op" in per[v]]
            if not vids:
                continue
            names = ["total"] + [n for n in SYSCALLS_TRACKED if any(per[v]["per_op"].get(n, 0) >= 0.05 for v in vids)]
            unit = "round trip" if case.startswith("pingpong") else "handshake"
            out += [f"Per {unit}, {PROFILE_LOADS[case][1]}:", "",
                    "| syscall | " + " | ".join(VARIANT_BY_ID[v].label for v in vids) + " |",
                    "|---|" + "---:|" * len(vids)]
            for n in names:
                out.append(f"| {n} | " + " | ".join(f"{per[v]['per_op'].get(n, 0):.2f}" for v in vids) + " |")
            out.append("| (µs CPU per op, this load) | " + " | ".join(
                f"{per[v]['cpu_us_per_op']:.1f}" if per[v].get("cpu_us_per_op") else "–" for v in vids) + " |")
            out += [""]

    if problems:
        out += ["## Problems seen during the run", "", *problems, ""]
    return "\n".join(out)


def cmd_env(argv, env, lines=1) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, cwd="/")
        return "; ".join((cp.stdout or cp.stderr).strip().splitlines()[:lines])
    except Exception as e:
        return f"n/a ({e.__class__.__name__})"


def tree_digest(root: Path) -> str:
    """Short hash of wsproxy/ (sources and built extensions) under ``root``."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((root / "wsproxy").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".so", ".pxd", ".lua", ".html", ".conf"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def snapshot_tree(tmp: Path) -> tuple[Path, str]:
    """Copy wsproxy/ as it is now (built extensions included), so that every proxy of the
    run imports the same code even while the working tree is being edited. The copy is
    kept as reports/bench/src-<digest>/: ``--src`` measures it again later."""
    shutil.copytree(ROOT / "wsproxy", tmp / "wsproxy", ignore=shutil.ignore_patterns("__pycache__"))
    digest = tree_digest(tmp)
    kept = REPORTS / f"src-{digest}"
    if not kept.exists():
        REPORTS.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, kept)
    shutil.rmtree(tmp)
    return kept, digest


def machine_info(bench: Bench) -> dict:
    def cmd(argv, stderr=False):
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            return ((cp.stderr if stderr else cp.stdout) or cp.stdout or cp.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"n/a ({e.__class__.__name__})"

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import uvloop

    try:
        import picows

        picows_v = getattr(picows, "__version__", None) or cmd([PY, "-m", "pip", "show", "picows"]).split()[-1]
    except ImportError:
        picows_v = "not installed"
    info = {
        "CPU": f"{model}, nproc {os.cpu_count()}",
        "kernel": platform.release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvloop": uvloop.__version__,
        "picows (member and client)": picows_v,
        "wsproxy": cmd_env([PY, "-m", "wsproxy", "version"], bench.py_env(), lines=2),
        "HAProxy": cmd([bench.haproxy, "-v"]) if bench.haproxy else "not installed",
        "NGINX": cmd([bench.nginx, "-v"], stderr=True) if bench.nginx else "not installed",
        "RLIMIT_NOFILE": str(bench.nofile),
    }
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "wsproxy", "ext"],
                               capture_output=True, text=True).stdout.strip()
        info["commit"] = rev + (" + uncommitted changes in wsproxy/ or ext/" if dirty else "")
        if bench.a.src:
            info["commit"] += " (of the working tree at the start; the code measured is the --src copy below)"
        if bench.src is not None:
            info["code measured"] = (f"{bench.src.relative_to(ROOT) if bench.src.is_relative_to(ROOT) else bench.src}"
                                     f" (a copy of wsproxy/, digest {bench.digest}), imported by every wsproxy "
                                     "process of the run")
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- compare / self-check

def compare(a_path: str, b_path: str) -> int:
    A, B = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    ma, mb = medians(A["results"]), medians(B["results"])
    vids = [v for v in A["variants"] if v in B["variants"] and v != "haproxy" and v in ma and v in mb]
    print(f"Ratios to HAProxy: {a_path} -> {b_path} (relative change of the ratio)\n")
    print("| figure | " + " | ".join(VARIANT_BY_ID[v].label for v in vids) + " |")
    print("|---|" + "---:|" * len(vids))
    changes = []
    for f in FIGURES:
        key = f"{f.case}.{f.field}"
        cells = []
        for v in vids:
            ra, rb = ratio(ma, v, key), ratio(mb, v, key)
            if ra is None or rb is None:
                cells.append("–")
                continue
            ch = rb / ra - 1
            changes.append(abs(ch))
            cells.append(f"{ra:.2f}→{rb:.2f} ({100 * ch:+.0f}%)")
        print(f"| {f.label} | " + " | ".join(cells) + " |")
    if changes:
        changes.sort()
        print(f"\n{len(changes)} ratios: median change {100 * statistics.median(changes):.1f}%, "
              f"largest {100 * changes[-1]:.1f}%")
    return 0


def self_check(bench: Bench) -> int:
    """Short, loud checks that the harness works on this machine."""
    ok = True
    a = bench.a
    a.duration, a.warmup, a.idle_conns = 0.5, 0.2, 200
    print(f"taskset: {bench.taskset or 'MISSING (no pinning)'}; prlimit: {bench.prlimit or 'missing (bash ulimit)'}; "
          f"RLIMIT_NOFILE {bench.nofile}; haproxy: {bench.haproxy or 'not installed'}; nginx: {bench.nginx or 'not installed'}")
    try:
        import picows  # noqa: F401
    except ImportError:
        print("FAIL picows is not installed: pip install -e '.[bench]'")
        return 1
    bench.start_member()
    vs = [VARIANT_BY_ID[v] for v in ("direct", "wsproxy-track", "wsproxy-raw-pure", "haproxy", "nginx")]
    for v in vs:
        why = bench.available(v)
        if why:
            print(f"skip {v.label}: {why}")
            continue
        try:
            proxy, port = bench.start_proxy(v)
        except HarnessError as e:
            ok = False
            print(f"FAIL {v.label:20} start: {e}")
            continue
        try:
            for cid in ("pingpong1", "handshake", "idle"):
                if cid == "idle" and v.kind == "direct":
                    continue
                r = bench.load(CASE_BY_ID[cid], port, proxy)
                good = "error" not in r and not r.get("errors") and (r.get("count") or r.get("conns"))
                if cid == "idle" and good:
                    good = r.get("alive") == r.get("conns")
                if proxy is not None and cid != "idle" and good:
                    good = r.get("proxy_cpu_s") is not None
                ok &= bool(good)
                print(f"{'ok  ' if good else 'FAIL'} {v.label:20} {cid:10} {brief(cid, r)}")
        finally:
            if proxy is not None:
                proxy.stop(grace=3.0)
    m = run_micro(bench)
    good = "rows" in m and all(r.get("c_ns") for r in m["rows"])
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} micro.py: " + (", ".join(f"{r['speedup']:.0f}×" for r in m["rows"] if r.get("speedup")) if good else str(m)[:300]))
    print("self-check: " + ("all good" if ok else "FAILED"))
    return 0 if ok else 1


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="wsproxy benchmark suite (issue #4); see benchmarks/README.md")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1 s windows, 2,000 idle connections, no profile")
    ap.add_argument("--cases", nargs="+", choices=[c.id for c in CASES] + ["micro"], metavar="CASE",
                    help=f"subset of: {' '.join(c.id for c in CASES)} micro (default: all)")
    ap.add_argument("--proxies", nargs="+", metavar="PROXY",
                    help=f"subset of: {' '.join(v.id for v in VARIANTS)}, or 'wsproxy' for all its variants "
                         "(default: all; haproxy is always added for the ratios)")
    ap.add_argument("--repeat", type=int, help="runs of each case per proxy (default 5, idle at most 3; --quick 1)")
    ap.add_argument("--duration", type=float, help="measurement window, s (default 2; --quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up before each window, s (default 0.5; --quick 0.3)")
    ap.add_argument("--idle-conns", type=int, help="idle case: connections (default 9000; --quick 2000)")
    ap.add_argument("--out", help="markdown file to write (default: benchmarks/RESULTS.md on a full run; "
                                  "--quick only prints unless --out is given); '-' = print only")
    ap.add_argument("--json", help="raw results file (default reports/bench/<stamp>.json)")
    ap.add_argument("--profile", dest="profile", action="store_true", default=None,
                    help="py-spy profiles of wsproxy track under 100-conn ping-pong and handshakes (default on a full run)")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--profile-seconds", type=float, default=10.0)
    ap.add_argument("--src", metavar="DIR", help="run wsproxy from DIR/wsproxy (e.g. reports/bench/src-<digest> "
                                                 "kept by an earlier run) instead of a fresh copy of the tree")
    ap.add_argument("--max-other", type=float, default=0.10,
                    help="a window in which other processes used more than this share of a core is "
                         "run again after the machine calms down (default 0.10)")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a disturbed window (default 2)")
    ap.add_argument("--quiet-timeout", type=float, default=600.0,
                    help="longest wait for a quiet machine, s (default 600), at the start and before a rerun")
    ap.add_argument("--live-tree", action="store_true",
                    help="run wsproxy from the working tree itself instead of a copy taken at the start")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset (for a 1-core box; figures then mean less)")
    ap.add_argument("--notes", help="text for a Notes section of the report (a file path or the text)")
    ap.add_argument("--self-check", action="store_true", help="short run that tells whether the harness works here")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="ratio changes between two runs")
    ap.add_argument("--render", metavar="RUN.json", help="re-render the markdown of a saved run (no measuring)")
    a = ap.parse_args(argv)
    if a.repeat is None:
        a.repeat = 1 if a.quick else 5
    if a.duration is None:
        a.duration = 1.0 if a.quick else 2.0
    if a.warmup is None:
        a.warmup = 0.3 if a.quick else 0.5
    if a.profile is None:
        a.profile = not a.quick and a.cases is None
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.compare:
        return compare(*a.compare)
    if a.render:
        doc = json.loads(Path(a.render).read_text())
        if a.notes:
            doc["notes"] = Path(a.notes).read_text() if os.path.exists(a.notes) else a.notes
        text = render(doc)
        if a.out and a.out != "-":
            Path(a.out).write_text(text)
        print(text)
        return 0
    try:
        os.sched_setaffinity(0, {int(LOAD_CPU)})  # the harness itself stays off the proxy's core
    except (OSError, AttributeError):
        pass
    command = "python benchmarks/run.py" + ("" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv))
    if os.cpu_count() and os.cpu_count() < 2 and not a.no_pin:
        log("run.py: fewer than 2 CPUs: pinning disabled")
        a.no_pin = True
    with tempfile.TemporaryDirectory(prefix="wsproxy-bench-") as td:
        try:
            bench = Bench(a, Path(td))
        except HarnessError as e:
            log(f"run.py: {e}")
            return 2
        try:
            if a.self_check:
                return self_check(bench)
            try:
                import picows  # noqa: F401
            except ImportError:
                log("run.py: picows is not installed: pip install -e '.[bench]' (or make bench)")
                return 2
            if a.proxies:
                ids = []
                for p in a.proxies:
                    if p == "wsproxy":
                        ids += [v.id for v in VARIANTS if v.kind == "wsproxy"]
                    elif p in VARIANT_BY_ID:
                        ids.append(p)
                    else:
                        log(f"run.py: unknown proxy {p!r}; choose from {', '.join(VARIANT_BY_ID)} or wsproxy")
                        return 2
                if "haproxy" not in ids:
                    ids.insert(0, "haproxy")
                variants = [v for v in VARIANTS if v.id in ids]
            else:
                variants = list(VARIANTS)
            case_ids = a.cases or [c.id for c in CASES] + ["micro"]
            cases = [c for c in CASES if c.id in case_ids]
            t0 = time.time()
            machine = machine_info(bench)
            na = {v.id: bench.available(v) for v in variants if bench.available(v)}
            for vid, why in na.items():
                log(f"run.py: {VARIANT_BY_ID[vid].label}: {why}")
            results: dict = {}
            bench.wait_quiet("before starting")
            if cases:
                bench.start_member()
                results = run_suite(bench, variants, cases)
            micro = run_micro(bench) if "micro" in case_ids else None
            profile = None
            syscalls = None
            if a.profile:
                if not bench.member:
                    bench.start_member()
                profile = {}
                for pcase in PROFILE_LOADS:
                    log(f"run.py: profiling wsproxy track under {pcase} for {a.profile_seconds:g} s (py-spy)")
                    profile[pcase] = run_profile(bench, a.profile_seconds, pcase)
                syscalls = {}
                for pcase in PROFILE_LOADS:
                    log(f"run.py: counting syscalls per {pcase} operation (perf stat)")
                    syscalls[pcase] = run_syscalls(bench, pcase, [v.id for v in variants if v.id in (
                        "haproxy", "nginx", "wsproxy-track", "wsproxy-raw")])
            notes = None
            if a.notes:
                notes = Path(a.notes).read_text() if os.path.exists(a.notes) else a.notes
            if bench.src is not None and not a.src:
                live = tree_digest(ROOT)
                if live != bench.digest:
                    machine["code measured"] += (f"; the working tree changed during the run (now {live}): "
                                                 "these figures are for the copy")
            doc = {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
                "elapsed_s": time.time() - t0,
                "command": command, "machine": machine, "repeat": a.repeat, "duration": a.duration,
                "warmup": a.warmup, "no_pin": a.no_pin,
                "variants": [v.id for v in variants], "cases": [c.id for c in cases],
                "na": na, "results": results, "micro": micro, "profile": profile, "syscalls": syscalls,
                "notes": notes,
            }
        except HarnessError as e:
            log(f"run.py: {e}")
            return 2
        finally:
            if bench.member:
                bench.member.stop(grace=2.0)
    REPORTS.mkdir(parents=True, exist_ok=True)
    json_path = Path(a.json) if a.json else REPORTS / (time.strftime("%Y%m%d-%H%M%S", time.gmtime(t0)) + ".json")
    json_path.write_text(json.dumps(doc, indent=1))
    text = render(doc)
    print(text)
    out = a.out if a.out else (None if a.quick or a.cases or a.proxies else str(HERE / "RESULTS.md"))
    if out and out != "-":
        Path(out).write_text(text)
        log(f"run.py: wrote {out}")
    log(f"run.py: raw results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
