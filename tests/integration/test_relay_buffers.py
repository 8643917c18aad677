"""The relay's read path with real sockets: BufferedProtocol legs reading into one shared
buffer, direct sends, partial writes and backpressure, buffer ownership.

The relay reads every connection into one buffer per worker and forwards from it, so the
failure this file hunts is a transport that still holds a view of that buffer when the next
read overwrites it (uvloop, and asyncio from 3.12, keep a view of what they could not send
at once): the payload would arrive corrupted. Hence large messages to slow readers (partial
writes, backpressure, both directions), many connections interleaving, and a member that
dies while the legs are backed up, every payload checked by hash.

Two kinds of test: through the proxy as a subprocess (uvloop, the production loop), and the
relay in-process between real sockets on both loops, asyncio's and uvloop's, where the legs
can be watched (buffered reads taken, pauses seen).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import threading
import time

import pytest
import uvloop
from websockets.asyncio.client import connect as _ws_connect

from .support import (
    HOST,
    FrameParser,
    build_frame,
    close_code_of,
    raw_ws_connect,
    run,
    site_conf,
)

MiB = 1024 * 1024


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("compression", None)
    return _ws_connect(url, **kw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payloads(seed: int, sizes) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


# ----------------------------------------------------------------------------- through the proxy

def slow_echo(port: int, path: str, messages: list[bytes], *, slow_bytes: int, pause: float = 0.004):
    """Send ``messages`` (binary frames) from a thread while reading their echoes slowly:
    64 KiB per read with a pause until ``slow_bytes`` arrived, then fast. Returns the hashes
    of the echoed payloads, in order."""
    s, leftover = raw_ws_connect(port, path, timeout=60)
    errors: list[BaseException] = []

    def sender():
        try:
            for m in messages:
                s.sendall(build_frame(0x2, m))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with s:
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        parser = FrameParser()
        got: list[str] = [sha(f[2]) for f in parser.feed(leftover) if f[0] == 0x2]
        received = 0
        deadline = time.monotonic() + 90
        while len(got) < len(messages) and time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            received += len(data)
            for f in parser.feed(data):
                assert f[0] == 0x2, f"unexpected frame {f[0]:#x} {f[2][:80]!r}"
                got.append(sha(f[2]))
            if received < slow_bytes:
                time.sleep(pause)
        t.join(30)
    assert not errors, errors
    return got


@pytest.mark.parametrize("mode", ["track", "raw"])
def test_large_messages_to_a_slow_reader_arrive_intact(members, proxy, mode):
    """8 MiB, 1 MiB and random sizes echoed to a client that reads slowly at first: the
    proxy's writes to the client are partial, the echo member stops reading, so both legs
    back up; every payload must come back bit for bit."""
    m = members.ws("w")
    p = proxy(site_conf({"ws": {"members": [m.addr], "relay": mode}}))
    rng = random.Random(4)
    sizes = [8 * MiB, 1 * MiB] + [rng.choice([1, 125, 126, 65535, 65536, 65537]) for _ in range(6)]
    sizes += [rng.randint(1, 600_000) for _ in range(24)] + [3 * MiB + 7]
    messages = payloads(11, sizes)
    got = slow_echo(p.port, f"/big-{mode}", messages, slow_bytes=4 * MiB)
    assert got == [sha(x) for x in messages]
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws", timeout=10)
    # the client's socket is closed without a Close frame: the session still ended cleanly
    assert log is not None and log["bytes_in"] >= sum(sizes), log


def test_many_connections_interleave_through_the_shared_buffer(members, proxy):
    """60 connections at once, each echoing its own random messages (1 B to 300 KiB): reads of
    all of them go through the same buffer, in whatever order the loop delivers them."""
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}))
    n_conns, n_msgs = 60, 12

    async def one(i: int) -> int:
        rng = random.Random(1000 + i)
        sizes = [rng.choice([rng.randint(1, 2000), rng.randint(2000, 300_000)]) for _ in range(n_msgs)]
        sent = payloads(2000 + i, sizes)
        async with ws_connect(f"{p.ws_url}/many{i}") as ws:
            async def reader() -> list[bytes]:
                return [await asyncio.wait_for(ws.recv(), 30) for _ in sent]

            task = asyncio.create_task(reader())
            for msg in sent:  # pipelined: the echoes of earlier messages flow meanwhile
                await ws.send(msg)
                await asyncio.sleep(rng.random() * 0.003)
            echoed = await task
        assert [sha(x) for x in echoed] == [sha(x) for x in sent], f"connection {i}"
        return ws.close_code

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n_conns)))

    assert run(main(), timeout=90) == [1000] * n_conns


def test_member_dies_while_the_legs_are_backed_up_client_gets_1014(members, proxy):
    """The member reads nothing (/slowread) while the client pushes up to 64 MiB: the member
    leg holds unsent bytes and the client leg is paused. The member is then killed: the client still
    gets Close 1014 (the member->client stream is at a frame boundary)."""
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}))
    s, leftover = raw_ws_connect(p.port, "/slowread?seconds=30")
    sent = [0]

    def pusher():
        block = build_frame(0x2, os.urandom(256 * 1024))
        try:
            while sent[0] < 64 * MiB:
                s.sendall(block)
                sent[0] += len(block)
        except OSError:
            pass  # the proxy closed the connection

    with s:
        t = threading.Thread(target=pusher, daemon=True)
        t.start()
        time.sleep(1.5)  # let the buffers fill (the member's library reads some MiB ahead)
        assert sent[0] < 64 * MiB, "nothing backed up: the test would prove nothing"
        m.kill()
        parser = FrameParser()
        frames = parser.feed(leftover)
        s.settimeout(10)
        deadline = time.monotonic() + 10
        while not any(f[0] == 0x8 for f in frames) and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not data:
                break
            frames += parser.feed(data)
        closes = [f for f in frames if f[0] == 0x8]
        assert closes, f"no Close frame, got {frames}"
        assert close_code_of(closes[0]) == 1014
        s.shutdown(socket.SHUT_WR)
        t.join(10)
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws", timeout=10)
    assert log is not None and log["closed_by"] == "member", log


# ----------------------------------------------------------------------------- in-process, both loops

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _accepted(loop, make_protocol):
    """A real TCP connection: (our outside socket, the proxy-side transport's protocol)."""
    with socket.create_server((HOST, 0)) as lsock:
        outside = socket.create_connection(lsock.getsockname())
        inside, _ = lsock.accept()
    outside.setblocking(False)
    outside.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # backs up sooner
    _, protocol = await loop.connect_accepted_socket(make_protocol, inside)
    return outside, protocol


async def _recv_frames(loop, sock, parser, count, *, slow_until=0, pause=0.002):
    frames, received = [], 0
    while len(frames) < count:
        data = await loop.sock_recv(sock, 65536)
        assert data, "connection closed early"
        received += len(data)
        frames += parser.feed(data)
        if received < slow_until:
            await asyncio.sleep(pause)
    return frames


async def _relay_both_ways(mode: str):
    from wsproxy.proxy import relay as relay_module
    from wsproxy.proxy.endpoint import Endpoint

    loop = asyncio.get_running_loop()
    calls = {"get_buffer": 0, "buffer_updated": 0, "data_received": 0, "pause_writing": 0}

    class CountingLeg(relay_module._Leg):
        __slots__ = ()

        def get_buffer(self, sizehint):
            calls["get_buffer"] += 1
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            calls["buffer_updated"] += 1
            super().buffer_updated(nbytes)

        def data_received(self, data):
            calls["data_received"] += 1
            super().data_received(data)

        def pause_writing(self):
            calls["pause_writing"] += 1
            super().pause_writing()

    class Relay(relay_module.WsRelay):
        __slots__ = ()
        Leg = CountingLeg

    client_out, client_ep = await _accepted(loop, Endpoint)
    member_out, member_ep = await _accepted(loop, Endpoint)
    relay = Relay(client_ep, member_ep, mode=mode, rsv=0, idle_timeout=0)
    relay.start(b"", b"")
    assert isinstance(client_ep.transport.get_protocol(), CountingLeg)
    assert isinstance(member_ep.transport.get_protocol(), CountingLeg)

    up = payloads(21, [3 * MiB, 1, 70_000, MiB, 125, 200_000])
    down = payloads(22, [2 * MiB, 126, 65536, 3 * MiB, 9])
    up_wire = b"".join(build_frame(0x2, x) for x in up)
    down_wire = b"".join(build_frame(0x2, x, mask=False) for x in down)

    # Both outside ends send everything at once and read slowly at first: each leg's writes
    # back up (pause_writing), which pauses reading on the other leg.
    sends = [asyncio.create_task(loop.sock_sendall(client_out, up_wire)),
             asyncio.create_task(loop.sock_sendall(member_out, down_wire))]
    await asyncio.sleep(0.3)
    at_member, at_client = await asyncio.wait_for(asyncio.gather(
        _recv_frames(loop, member_out, FrameParser(), len(up), slow_until=2 * MiB),
        _recv_frames(loop, client_out, FrameParser(), len(down), slow_until=2 * MiB),
    ), 60)
    await asyncio.wait_for(asyncio.gather(*sends), 10)
    assert [sha(f[2]) for f in at_member] == [sha(x) for x in up]
    assert [sha(f[2]) for f in at_client] == [sha(x) for x in down]
    assert relay.bytes_in == len(up_wire) and relay.bytes_out == len(down_wire)
    if mode == "track":
        assert (relay.c2u.frames, relay.u2c.frames) == (len(up), len(down))
    legs = (relay.client_leg, relay.member_leg)
    fds = [leg.fd for leg in legs]
    client_out.close()
    member_out.close()
    await asyncio.wait_for(relay.done, 10)
    return calls, fds


@pytest.mark.parametrize("mode", ["track", "raw"])
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_in_process_relay_reads_into_the_shared_buffer(loop_name, mode):
    from wsproxy import _speedups

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        calls, fds = runner.run(asyncio.wait_for(_relay_both_ways(mode), 90))
    # set_protocol switched both transports to buffered reads, on either loop
    assert calls["get_buffer"] > 0 and calls["buffer_updated"] > 0, calls
    assert calls["data_received"] == 0, calls
    assert calls["pause_writing"] > 0, f"no write ever backed up: {calls}"
    if _speedups.IMPLEMENTATION == "c":
        assert all(fd >= 0 for fd in fds)  # plain TCP: direct sends were allowed
    else:
        assert fds == [-1, -1]  # the pure twin always writes through the transport
