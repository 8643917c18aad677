"""Slowloris: 5,000 half-open request heads, a byte every 2-3 s, must not slow healthy clients,
and ``head_timeout`` must close every one of them.

A helper process (servers/slow_clients.py) opens the 5,000 connections and trickles bytes of
a head that never ends; this process meanwhile measures healthy clients through the same
listener: a WebSocket echo round trip on an open connection, a GET on a keep-alive
connection and a GET on a new connection, each a few hundred times before the attack and
throughout it (opening, trickling and the mass 408 at the end). Then:

- p99 during < max(5 x p99 before, p99 before + 50 ms), per kind of request. A proxy that
  blocked on slow clients would add seconds (the bytes come every 2-3 s), one that ran out
  of connection slots would stall new clients; the 50 ms floor absorbs a loaded 2-core VM,
  where the attacker, the proxy, the members and this client share two cores and
  sub-millisecond baselines make a plain ratio meaningless.
- Every slow connection is closed by the proxy with 408, between head_timeout (4 s) and
  head_timeout + 3 s after it connected (the timer runs from the accept; 3 s of slack for a
  loaded machine; a timer reset by each byte would never close them, since they keep
  trickling), and ``wsproxy_rejections_total{reason="head_timeout"}`` counts all 5,000.
- Memory stays bounded: two more attacks follow, and the proxy's RSS after the third is
  what it was after the second (CPython keeps freed memory for reuse, so RSS does not fall
  back to the baseline; see the comment at the end of the test).

The numbers are printed (pytest -s) for the README; benchmarks/slowloris.py is the bigger,
longer run, also against HAProxy. A second, short test checks that waiting before the first
byte buys a slow client no time: the first head's timer runs from the accept.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

from .support import (HOST, SERVERS, base_env, connect, port_open, read_until_closed, rejection_deltas, rejections,
                      site_conf, start_member, start_proxy, wait_until)

SLOW_CONNS = 5000
HEAD_TIMEOUT = 4.0
CLOSE_SLACK = 3.0
LINGER = 2.0  # endpoint.linger_close: how long a closed client's connection may linger
BASELINE_ROUNDS = 200
PAUSE = 0.01  # between probe rounds: spread the samples over the attack
KINDS = ("ws_echo", "http_keepalive", "http_new_conn")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < SLOW_CONNS + 1000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {SLOW_CONNS} connections")


async def read_http_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def probe(port: int, keep_going, max_rounds: int, rss_of) -> tuple[dict[str, list[float]], int]:
    """Healthy clients: (latencies in seconds per kind, highest RSS seen in KiB); rounds go on
    while ``keep_going()`` and at most ``max_rounds``."""
    latencies = {kind: [] for kind in KINDS}
    peak_rss = 0
    get = b"GET /web/healthy HTTP/1.1\r\nHost: healthy.example\r\n\r\n"
    async with ws_connect(f"ws://{HOST}:{port}/echo", proxy=None, compression=None, ping_interval=None) as ws:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            rounds = 0
            while rounds < max_rounds and keep_going():
                rounds += 1
                started = time.perf_counter()
                await ws.send(b"x" * 32)
                assert await ws.recv() == b"x" * 32
                latencies["ws_echo"].append(time.perf_counter() - started)

                started = time.perf_counter()
                writer.write(get)
                assert await read_http_response(reader) == 200
                latencies["http_keepalive"].append(time.perf_counter() - started)

                started = time.perf_counter()
                r2, w2 = await asyncio.open_connection(HOST, port)
                w2.write(get)
                assert await read_http_response(r2) == 200
                latencies["http_new_conn"].append(time.perf_counter() - started)
                w2.close()

                if rounds % 10 == 0:
                    peak_rss = max(peak_rss, rss_of())
                await asyncio.sleep(PAUSE)
        finally:
            writer.close()
    return latencies, peak_rss


def start_attacker(port: int, report: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SERVERS / "slow_clients.py"), "--port", str(port), "--conns", str(SLOW_CONNS),
         "--interval", "2-3", "--rate", "2500", "--duration", "30", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=base_env(), text=True,
    )


def finish_attacker(attacker: subprocess.Popen, report: Path) -> dict:
    output = attacker.communicate(timeout=60)[0]
    assert attacker.returncode == 0, output
    return json.loads(report.read_text())


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def peak_open(clients: list[dict]) -> int:
    """The most slow connections open at the same moment (client's view)."""
    events = sorted([(c["connected"], 1) for c in clients] + [(c["closed"], -1) for c in clients if c["closed"]])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_slowloris_does_not_slow_healthy_clients(tmp_path):
    raise_fd_limit()
    ws_member = start_member("ws_echo.py", "ws", tmp_path)
    web_member = start_member("http_app.py", "web", tmp_path)
    conf = site_conf(
        {"ws": [ws_member.addr], "web": [web_member.addr]},
        routes=[{"path_prefix": "/web/", "pool": "web"}, {"pool": "ws"}],
        listener={"head_timeout": f"{HEAD_TIMEOUT:g}s", "max_conns": 20000, "max_conns_per_ip": 0},
        server={"admin": f"{HOST}:$PORT9"},
    )
    proxy = start_proxy(conf, tmp_path)
    attacker = None
    try:
        admin = int(proxy.config["server"]["admin"].rsplit(":", 1)[1])
        assert wait_until(lambda: port_open(admin), 10), proxy.stderr_text()[-3000:]
        port = proxy.port

        # -- before: warm up, then the baseline
        asyncio.run(probe(port, lambda: True, 20, proxy.rss_kb))
        before, _ = asyncio.run(probe(port, lambda: True, BASELINE_ROUNDS, proxy.rss_kb))
        rss_before = proxy.rss_kb()
        counts_before = rejections(admin)

        # -- during: from the first slow connect until the proxy closed the last one
        attacker = start_attacker(port, tmp_path / "round1.json")
        attack_started = time.monotonic()
        during, rss_peak = asyncio.run(probe(port, lambda: attacker.poll() is None, 100_000, proxy.rss_kb))
        result = finish_attacker(attacker, tmp_path / "round1.json")
        attack_seconds = time.monotonic() - attack_started
        clients = result["clients"]
        time.sleep(LINGER + 0.5)  # the 408s' lingering closes end
        rss_after = proxy.rss_kb()

        # -- two more attacks: the memory the first one took is reused, not added to
        later_rounds, rss_after_round = [], [rss_after]
        for round_no in (2, 3):
            attacker = start_attacker(port, tmp_path / f"round{round_no}.json")
            later_rounds += finish_attacker(attacker, tmp_path / f"round{round_no}.json")["clients"]
            time.sleep(LINGER + 0.5)
            rss_after_round.append(proxy.rss_kb())
        deltas = rejection_deltas(rejections(admin), counts_before)
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
        proxy.stop()
        ws_member.kill()
        web_member.kill()

    delays = [c["closed"] - c["connected"] for c in clients if c["closed"] is not None]
    statuses = {}
    for c in clients:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    lines = [f"slowloris: {len(clients)} slow connections ({result['failed']} failed to open), "
             f"opened in {result['opened'] - result['started']:.2f}s, peak open {peak_open(clients)}, "
             f"attack {attack_seconds:.1f}s"]
    for kind in KINDS:
        lines.append(f"  {kind:15} before p50 {ms(statistics.median(before[kind]))} p99 {ms(quantile(before[kind], .99))}"
                     f" | during p50 {ms(statistics.median(during[kind]))} p99 {ms(quantile(during[kind], .99))}"
                     f" max {ms(max(during[kind]))} ({len(during[kind])} samples)")
    lines.append(f"  closed after connecting: min {min(delays):.2f}s p50 {statistics.median(delays):.2f}s "
                 f"max {max(delays):.2f}s; statuses {statuses}")
    lines.append(f"  proxy RSS: before {rss_before / 1024:.1f} MiB, peak {rss_peak / 1024:.1f} MiB, "
                 f"after attacks 1, 2, 3: {', '.join(f'{r / 1024:.1f}' for r in rss_after_round)} MiB; "
                 f"rejections {deltas}")
    print("\n".join(lines))

    assert result["failed"] == 0 and len(clients) == SLOW_CONNS, result["failures"]
    for kind in KINDS:
        assert len(during[kind]) >= 200, f"too few samples during the attack ({len(during[kind])}): {kind}"
        p99_before, p99_during = quantile(before[kind], .99), quantile(during[kind], .99)
        assert p99_during < max(5 * p99_before, p99_before + 0.050), "\n".join(lines)
    # Every slow connection was closed by the proxy, with 408, on time.
    assert all(c["closed_by"] == "server" for c in clients), "\n".join(lines)
    assert statuses == {"HTTP/1.1 408 Request Timeout": SLOW_CONNS}, "\n".join(lines)
    # (The proxy may accept a little before this client's loop notices the connection.)
    assert min(delays) >= HEAD_TIMEOUT - 0.25, "\n".join(lines)
    assert max(delays) <= HEAD_TIMEOUT + CLOSE_SLACK, "\n".join(lines)
    assert len(later_rounds) == 2 * SLOW_CONNS
    assert all(c["closed_by"] == "server" and c["status"] == "HTTP/1.1 408 Request Timeout" for c in later_rounds)
    assert deltas == {("public", "head_timeout"): 3 * SLOW_CONNS}, deltas
    # Memory: CPython's allocators keep most of the peak once the sessions are freed (the
    # Python heap itself goes back to its size before: tracemalloc says so), so RSS does not
    # fall back to the baseline. What must hold: later attacks reuse that memory. The second
    # one still settles the allocator (+8 MiB here); the third may add at most 4 MiB of
    # noise, where a leak of 1 KiB per connection would add 5 MiB.
    growth = rss_peak - rss_before
    assert max(rss_after_round) <= rss_peak + 0.3 * growth, "\n".join(lines)
    assert rss_after_round[2] - rss_after_round[1] <= 4 * 1024, "\n".join(lines)


def test_waiting_before_the_first_byte_buys_no_time(tmp_path):
    """The first head's timer runs from the accept: a slow client that waits before its
    first byte is closed head_timeout after connecting, not head_timeout after that byte."""
    member = start_member("ws_echo.py", "ws", tmp_path)
    proxy = start_proxy(site_conf({"ws": [member.addr]}, listener={"head_timeout": "2s"}), tmp_path)
    try:
        with connect(proxy.port) as s:
            started = time.monotonic()
            time.sleep(1.5)
            s.sendall(b"G")
            answer = read_until_closed(s, timeout=10)
            took = time.monotonic() - started
    finally:
        proxy.stop()
        member.kill()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:100]
    assert 1.9 < took < 3.0, took  # was 3.5 s (2 s from the byte) before the fix
