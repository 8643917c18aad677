"""Opt-in reconnect of the member leg (``reconnect = { deadline, buffer }``): a member killed
mid-session is replaced behind the client's back, the client's unanswered messages are
replayed to the new member (at-least-once), and where that cannot be done the client gets
Close 1014 as without the key.

The victim is stopped (SIGSTOP) before the client sends the messages that stay unanswered,
then killed (SIGKILL): its connection is reset with them unread.
"""

from __future__ import annotations

import asyncio
import signal
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .support import run, wait_until

CONF = """
[listeners.public]
bind = "127.0.0.1:$PORT"
routes = [{ pool = "chat" }]
[pools.chat]
members = [%s]
%s
"""


def conf(members, reconnect: str | None) -> str:
    return CONF % (", ".join('"%s"' % m.addr for m in members),
                   "reconnect = %s" % reconnect if reconnect else "")


async def _stop_and_kill(victim, ws, unanswered) -> float:
    """Stop the victim, send ``unanswered`` (they reach its socket, unread), kill it."""
    victim.proc.send_signal(signal.SIGSTOP)
    for message in unanswered:
        await ws.send(message)
    await asyncio.sleep(0.3)
    victim.proc.send_signal(signal.SIGKILL)
    return time.monotonic()


def test_reconnect_replays_unanswered_messages_to_another_member(members, proxy) -> None:
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], '{ deadline = "5s", buffer = "1MiB" }'))

    async def scenario():
        async with connect(f"{p.ws_url}/whoami", ping_interval=None, compression=None) as ws:
            first = await ws.recv()
            victim, other = (a, b) if first == "a" else (b, a)
            await ws.send("x1")
            assert await ws.recv() == "x1"  # the victim's last word
            await _stop_and_kill(victim, ws, ["u1", "u2"])
            # The new member's own first message (its /whoami greeting), then the replay's echoes.
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(3)]
            await ws.send("after")
            after = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(b"\x00" * 70000)  # a big frame on the new leg
            big = await asyncio.wait_for(ws.recv(), 10)
            return victim, other, got, after, len(big)

    victim, other, got, after, big = run(scenario(), timeout=30)
    assert got == [other.name, "u1", "u2"]
    assert after == "after" and big == 70000
    rec = other.wait_record(lambda r: r["path"] == "/whoami")
    assert rec is not None and rec["messages"] == 4  # u1, u2 (replayed), after, the big one
    assert rec["rcvd_code"] == 1000
    log = wait_until(lambda: p.access_logs("ws"), 5)
    entry = log[0]
    assert entry["reconnects"] == 1
    assert entry["member"] == victim.addr and entry["last_member"] == other.addr
    assert entry["close_code"] == 1000 and entry["closed_by"] == "client"
    assert "reconnect_off" not in entry


def test_reconnect_gives_up_after_the_deadline_with_1014(members, proxy) -> None:
    a = members.ws("a")
    p = proxy(conf([a], '{ deadline = "1s" }'))

    async def scenario():
        async with connect(f"{p.ws_url}/", ping_interval=None, compression=None) as ws:
            await ws.send("x1")
            assert await ws.recv() == "x1"
            t0 = await _stop_and_kill(a, ws, ["u1"])
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None, time.monotonic() - t0
        return "no close", 0

    code, elapsed = run(scenario(), timeout=30)
    assert code == 1014
    assert 0.7 <= elapsed <= 3.0, elapsed
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert entry["reconnects"] == 0
    assert entry["reconnect_off"].startswith("no member took the WebSocket within 1s")
    assert entry["unanswered_frames"] == 1  # "u1" went to the dead member
    assert entry["close_code"] == 1006 and entry["closed_by"] == "member"


def test_without_reconnect_1014_at_once(members, proxy) -> None:
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], None))

    async def scenario():
        async with connect(f"{p.ws_url}/whoami", ping_interval=None, compression=None) as ws:
            victim = a if await ws.recv() == "a" else b
            t0 = await _stop_and_kill(victim, ws, ["u1"])
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None, time.monotonic() - t0
        return "no close", 0

    code, elapsed = run(scenario(), timeout=30)
    assert code == 1014 and elapsed < 0.7, elapsed
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert "reconnects" not in entry and "reconnect_off" not in entry


def test_permessage_deflate_means_no_reconnect(members, proxy) -> None:
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], '{ deadline = "5s" }'))

    async def scenario():
        # compression="deflate" (the default): the members accept permessage-deflate
        async with connect(f"{p.ws_url}/whoami", ping_interval=None) as ws:
            victim = a if await ws.recv() == "a" else b
            t0 = await _stop_and_kill(victim, ws, ["u1"])
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None, time.monotonic() - t0
        return "no close", 0

    code, elapsed = run(scenario(), timeout=30)
    assert code == 1014 and elapsed < 0.7, elapsed
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert entry["reconnect_off"] == "extension negotiated"


def test_overflow_of_the_buffer_turns_reconnect_off(members, proxy) -> None:
    """More unanswered client bytes than ``buffer``: reconnect is off for that connection."""
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], '{ deadline = "5s", buffer = "1KiB" }'))

    async def scenario():
        async with connect(f"{p.ws_url}/whoami", ping_interval=None, compression=None) as ws:
            victim = a if await ws.recv() == "a" else b
            t0 = await _stop_and_kill(victim, ws, [b"x" * 600, b"y" * 600])
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None, time.monotonic() - t0
        return "no close", 0

    code, elapsed = run(scenario(), timeout=30)
    assert code == 1014 and elapsed < 0.7, elapsed
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert entry["reconnect_off"].startswith("buffer overflow")
    assert entry["unanswered_frames"] == 2


def test_keepalive_pings_resume_on_the_new_member(members, proxy) -> None:
    """With ping_interval on the pool, the pings stop while no member is there and start
    again on the new one: the WebSocket outlives several ping rounds after the reconnect."""
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], '{ deadline = "5s" }\nping_interval = "0.3s"\npong_timeout = "1s"'))

    async def scenario():
        async with connect(f"{p.ws_url}/whoami", ping_interval=None, compression=None) as ws:
            first = await ws.recv()
            victim, other = (a, b) if first == "a" else (b, a)
            await _stop_and_kill(victim, ws, ["u1"])
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(2)]
            await asyncio.sleep(2.5)  # several ping rounds, each answered by the new member
            await ws.send("still")
            still = await asyncio.wait_for(ws.recv(), 10)
            # The new member is pinged: stopped, it is found silent and the client gets 1001.
            other.proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.wait_for(ws.recv(), 10)
                code = "no close"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            other.proc.send_signal(signal.SIGCONT)
            return other, got, still, code

    other, got, still, code = run(scenario(), timeout=30)
    assert got == [other.name, "u1"] and still == "still"
    assert code == 1001
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert entry["reconnects"] == 1 and entry["closed_by"] == "proxy", entry
    assert entry["reason"].startswith("member did not answer a ping"), entry


def test_reconnect_after_a_clean_fin_with_nothing_to_replay(members, proxy) -> None:
    """An idle member killed (its socket ends with a FIN, no unread bytes): the new member
    takes over and nothing is replayed."""
    a, b = members.ws("a"), members.ws("b")
    p = proxy(conf([a, b], '{ deadline = "5s" }'))

    async def scenario():
        async with connect(f"{p.ws_url}/whoami", ping_interval=None, compression=None) as ws:
            first = await ws.recv()
            victim, other = (a, b) if first == "a" else (b, a)
            await ws.send("x1")
            assert await ws.recv() == "x1"
            victim.kill()
            greeting = await asyncio.wait_for(ws.recv(), 10)
            await ws.send("x2")
            return other, greeting, await asyncio.wait_for(ws.recv(), 10)

    other, greeting, echo = run(scenario(), timeout=30)
    assert greeting == other.name and echo == "x2"
    rec = other.wait_record(lambda r: r["path"] == "/whoami")
    assert rec is not None and rec["messages"] == 1  # only x2: x1 was answered, not replayed
    entry = wait_until(lambda: p.access_logs("ws"), 5)[0]
    assert entry["reconnects"] == 1 and entry["last_member"] == other.addr
