"""A member lost mid-stream: the client gets Close 1014, and what the client had sent after
the member's last word (unanswered frames and bytes) is in the access log and the metrics.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .support import HOST, run, wait_until

CONF = """
[server]
admin = "127.0.0.1:$PORT2"
[listeners.public]
bind = "127.0.0.1:$PORT"
routes = [{ pool = "chat" }]
[pools.chat]
members = ["%s"]
"""


def metric(proxy, name: str) -> float:
    port = int(proxy.config["server"]["admin"].rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'pool="chat"' in line)


def test_member_lost_reports_the_unanswered_client_frames(members, proxy) -> None:
    member = members.ws("m")
    p = proxy(CONF % member.addr)

    async def scenario():
        async with connect(f"{p.ws_url}/", ping_interval=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"  # the member's last word
            await ws.send("one")
            assert await ws.recv() == "one"
        # A member that reads nothing for a while: what the client sends goes unanswered.
        async with connect(f"{p.ws_url}/slowread?seconds=30", ping_interval=None, compression=None) as ws:
            for size in (10, 200, 3000):
                await ws.send(b"x" * size)
            await asyncio.sleep(0.3)  # forwarded to the member's socket
            member.proc.send_signal(signal.SIGKILL)
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
        return "no close"

    assert run(scenario(), timeout=30) == 1014
    log = wait_until(lambda: [r for r in p.access_logs("ws") if r.get("close_code") == 1006], 5)
    assert log, p.access_logs("ws")
    entry = log[0]
    # Three binary frames, masked from the client: 2+4+10 / 4+4+200 / 4+4+3000 bytes.
    assert entry["unanswered_frames"] == 3
    assert entry["unanswered_bytes"] == (6 + 10) + (8 + 200) + (8 + 3000)
    assert entry["closed_by"] == "member"
    first = [r for r in p.access_logs("ws") if r.get("close_code") == 1000]
    assert first and "unanswered_frames" not in first[0]  # a clean close reports nothing
    assert wait_until(lambda: metric(p, "wsproxy_member_lost_total") == 1, 5)
    assert metric(p, "wsproxy_member_lost_unanswered_frames_total") == 3
    assert metric(p, "wsproxy_member_lost_unanswered_bytes_total") == 3232
