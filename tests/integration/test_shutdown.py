"""SIGTERM is a graceful stop (issue #6): every WebSocket gets Close 1001, the closes are
spread over ``close_spread`` (no reconnect storm), the process exits within close_spread +
grace, and no process is left behind: with one process and with a master and two workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .support import run, site_conf, wait_until, children

N = 200
SPREAD = 2.0
GRACE = 3.0


def alive(pid: int) -> bool:
    """Running (a zombie, or no process at all, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def hold(url: str, n: int, ready: asyncio.Event, results: list) -> None:
    """Open ``n`` WebSockets, echo one message on each, then wait for the proxy's Close;
    ``results`` gets (monotonic time of the close, code received) per connection."""
    sem = asyncio.Semaphore(50)  # connects in flight at once
    opened = [0]

    async def one(i: int) -> None:
        async with sem:
            ws = await connect(f"{url}/c{i}", ping_interval=None, open_timeout=20, close_timeout=5)
            await ws.send(f"m{i}")
            assert await asyncio.wait_for(ws.recv(), 10) == f"m{i}"
        opened[0] += 1
        if opened[0] == n:
            ready.set()
        try:
            message = await asyncio.wait_for(ws.recv(), 30)
            results.append((time.monotonic(), f"unexpected message {message!r}"))
        except ConnectionClosed as exc:
            results.append((time.monotonic(), exc.rcvd.code if exc.rcvd is not None else None))

    await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_closes_every_websocket_1001_spread_over_close_spread(members, proxy, workers):
    m = members.ws("echo", record=True)
    p = proxy(site_conf({"echo": [m.addr]}, server={"workers": workers, "close_spread": f"{SPREAD}s",
                                                     "grace": f"{GRACE}s", "access_log": False}))
    if workers > 1:
        assert wait_until(lambda: len(children(p.proc.pid)) == workers, 10)
    procs = [p.proc.pid, *children(p.proc.pid)]
    results: list = []
    timing: dict = {}

    async def main():
        ready = asyncio.Event()
        clients = asyncio.create_task(hold(p.ws_url, N, ready, results))
        await asyncio.wait_for(ready.wait(), 60)
        timing["sigterm"] = time.monotonic()
        os.kill(p.proc.pid, signal.SIGTERM)  # the main process only: a master forwards it
        await asyncio.wait_for(clients, 30)

    run(main(), timeout=90)
    try:
        rc = p.proc.wait(SPREAD + GRACE + 2)
    except Exception:
        pytest.fail(f"the proxy did not exit within close_spread + grace:\n{p.stderr_text()[-3000:]}")
    exited = time.monotonic() - timing["sigterm"]
    assert rc == 0, p.stderr_text()[-3000:]
    assert exited < SPREAD + GRACE + 1.5, exited

    codes = [code for _, code in results]
    assert len(codes) == N
    assert codes == [1001] * N, sorted(set(map(str, codes)))
    times = sorted(t - timing["sigterm"] for t, _ in results)
    span = times[-1] - times[0]
    # Spread evenly over the window: it starts at once, ends near close_spread, and no
    # quarter of the window holds more than about a quarter of the closes.
    assert times[0] < 0.6, times[:3]
    assert SPREAD * 0.75 <= span <= SPREAD + 0.8, span
    quarters = [sum(1 for t in times if times[0] + q * span / 4 <= t < times[0] + (q + 1) * span / 4) for q in range(4)]
    assert max(quarters) < N * 0.4, quarters

    # The members saw a Close 1001 too, and no process of the proxy is left.
    assert wait_until(lambda: sum(1 for r in m.records() if r.get("rcvd_code") == 1001) >= N, 10)
    for pid in procs:
        assert not alive(pid), f"process {pid} still alive after the stop"


def test_worker_stops_when_its_master_dies(members, proxy):
    """A master killed with SIGKILL cannot tell its workers; the kernel does
    (PR_SET_PDEATHSIG): they stop gracefully (Close 1001) and exit."""
    m = members.ws("echo")
    p = proxy(site_conf({"echo": [m.addr]}, server={"workers": 2, "close_spread": "0.5s", "grace": "1s"}))
    assert wait_until(lambda: len(children(p.proc.pid)) == 2, 10)
    workers = children(p.proc.pid)
    codes: list = []

    async def main():
        conns = [await connect(f"{p.ws_url}/w{i}", ping_interval=None, close_timeout=5) for i in range(6)]
        for ws in conns:
            await ws.send("x")
            assert await ws.recv() == "x"
        os.kill(p.proc.pid, signal.SIGKILL)
        for ws in conns:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd is not None else None)

    run(main(), timeout=30)
    assert codes == [1001] * 6
    assert wait_until(lambda: not any(alive(w) for w in workers), 5), [w for w in workers if alive(w)]
