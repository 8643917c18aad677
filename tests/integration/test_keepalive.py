"""Keep-alive on both legs (per-route ping_interval / pong_timeout), through the proxy.

The proxy pings the client (unmasked) and the member (masked) and absorbs the Pongs that
answer it; an application's own ping/pong passes untouched. A leg that stops answering is
aborted and the other side gets Close 1001, with the reason in the access log. A WebSocket
alive by ping outlives ws_idle_timeout. Pings go only between frames: a large frame sent
slowly in pieces, both ways, arrives intact (a parser would see garbage, and the websockets
library fail the connection with 1002, if a ping landed inside it).

Members are raw asyncio servers recording every frame with its mask bit (or the websockets
echo member where a strict peer is wanted); clients are raw sockets where they must answer
or misbehave, else the websockets library (which answers pings by itself).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import struct
import time

import pytest
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed

from .support import HOST, run, site_conf

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING, PONG, CLOSE, TEXT, BINARY, CONT = 0x9, 0xA, 0x8, 0x1, 0x2, 0x0


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)  # the library's own pings would hide ours
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("compression", None)
    return _ws_connect(url, **kw)


def frame(opcode: int, payload: bytes = b"", *, mask: bool, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class Frames:
    """Incremental frame parser keeping (opcode, fin, masked, payload) of each frame."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bool, bool, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
            masked = bool(b1 & 0x80)
            key = bytes(self.buf[pos:pos + 4]) if masked else None
            pos += 4 if masked else 0
            if len(self.buf) < pos + n:
                break
            payload = bytes(self.buf[pos:pos + n])
            if key:
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if n < 4096 else _unmask(payload, key)
            out.append((b0 & 0x0F, bool(b0 & 0x80), masked, payload))
            del self.buf[:pos + n]
        return out


def _unmask(data: bytes, key: bytes) -> bytes:
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


class RawMember:
    """A one-path WebSocket member on asyncio streams: records every frame (mask bit
    included), answers pings while ``answer_pings``, echoes a Close, never echoes data."""

    def __init__(self, answer_pings: bool = True) -> None:
        self.answer_pings = answer_pings
        self.frames: list[tuple[int, bool, bool, bytes]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.mid_frame = False  # sending a frame in pieces: pongs wait (none may go inside it)
        self.held: list[bytes] = []
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, HOST, 0)
        return f"{HOST}:{self.server.sockets[0].getsockname()[1]}"

    async def _conn(self, reader, writer) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        self.writer = writer
        self.connected.set()
        parser = Frames()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for f in parser.feed(data):
                    self.frames.append(f)
                    if f[0] == PING and self.answer_pings:
                        self._answer(frame(PONG, f[3], mask=False))
                    elif f[0] == CLOSE:
                        writer.write(frame(CLOSE, f[3][:2], mask=False))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()
            writer.close()

    def _answer(self, pong: bytes) -> None:
        if self.mid_frame:
            self.held.append(pong)
        else:
            self.writer.write(pong)

    def send(self, data: bytes, *, mid_frame: bool = False) -> None:
        """Write ``data``; ``mid_frame``: it ends inside a frame, so pongs wait."""
        self.writer.write(data)
        self.mid_frame = mid_frame
        if not mid_frame:
            for pong in self.held:
                self.writer.write(pong)
            self.held.clear()

    def opcodes(self) -> list[int]:
        return [f[0] for f in self.frames]

    async def close(self) -> None:
        self.server.close()
        if self.writer is not None:
            self.writer.close()
        await asyncio.sleep(0)


class RawClient:
    """A WebSocket client on asyncio streams: records frames, answers pings while
    ``answer_pings``."""

    def __init__(self, answer_pings: bool = True) -> None:
        self.answer_pings = answer_pings
        self.frames: list[tuple[int, bool, bool, bytes]] = []
        self.ended = asyncio.Event()
        self.mid_frame = False  # sending a frame in pieces: pongs wait (none may go inside it)
        self.held: list[bytes] = []

    async def connect(self, port: int, path: str = "/") -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        parser = Frames()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for f in parser.feed(data):
                    self.frames.append(f)
                    if f[0] == PING and self.answer_pings:
                        pong = frame(PONG, f[3], mask=True)
                        if self.mid_frame:
                            self.held.append(pong)
                        else:
                            self.writer.write(pong)
        except ConnectionError:
            pass
        finally:
            self.ended.set()

    def send(self, data: bytes, *, mid_frame: bool = False) -> None:
        """Write ``data``; ``mid_frame``: it ends inside a frame, so pongs wait."""
        self.writer.write(data)
        self.mid_frame = mid_frame
        if not mid_frame:
            for pong in self.held:
                self.writer.write(pong)
            self.held.clear()

    def opcodes(self) -> list[int]:
        return [f[0] for f in self.frames]

    def close_code(self) -> int | None:
        for f in self.frames:
            if f[0] == CLOSE:
                return struct.unpack("!H", f[3][:2])[0] if len(f[3]) >= 2 else 1005
        return None

    def abort(self) -> None:
        self.writer.transport.abort()


def ka_conf(member_addr: str, *, relay: str | None = None, interval: str = "300ms", timeout: str = "1s",
            **pool) -> str:
    route = {"pool": "ws", "ping_interval": interval, "pong_timeout": timeout}
    if relay:
        route["relay"] = relay
    return site_conf({"ws": {"members": [member_addr], **pool}}, routes=[route])


def ws_access(p, timeout: float = 10.0) -> dict:
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws", timeout=timeout)
    assert log is not None, p.stderr_text()[-3000:]
    return log


async def until(pred, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


# ----------------------------------------------------------------------------- pings and pongs


@pytest.mark.parametrize("relay", ["track", "inspect"])
def test_both_legs_pinged_pongs_absorbed_application_pings_untouched(proxy, relay):
    async def main():
        member = RawMember()
        p = proxy(ka_conf(await member.start(), relay=relay))
        client = RawClient()
        await client.connect(p.port, "/ka")
        await member.connected.wait()
        await asyncio.sleep(1.2)  # about three pings each way
        # the application's own pings, both ways, with their pongs
        client.send(frame(PING, b"app-ping", mask=True))
        member.send(frame(PING, b"srv-ping", mask=False))
        assert await until(lambda: (PONG, True, False, b"app-ping") in [f for f in client.frames], 5)
        assert await until(lambda: (PONG, True, True, b"srv-ping") in member.frames, 5)

        ours_to_client = [f for f in client.frames if f[0] == PING and f[3] != b"srv-ping"]
        ours_to_member = [f for f in member.frames if f[0] == PING and f[3] != b"app-ping"]
        assert len(ours_to_client) >= 2 and len(ours_to_member) >= 2, (client.frames, member.frames)
        assert all(not f[2] and len(f[3]) == 8 for f in ours_to_client)  # unmasked to the client
        assert all(f[2] and len(f[3]) == 8 for f in ours_to_member)  # masked to the member
        token = ours_to_client[0][3]
        assert {f[3] for f in ours_to_client + ours_to_member} == {token}
        # our pongs stopped at the proxy; the application's crossed it
        assert [f[3] for f in member.frames if f[0] == PONG] == [b"srv-ping"]
        assert [f[3] for f in client.frames if f[0] == PONG] == [b"app-ping"]
        assert [f[3] for f in member.frames if f[0] == PING and f[3] == b"app-ping"] == [b"app-ping"]
        assert not client.ended.is_set() and not member.ended.is_set()
        client.send(frame(CLOSE, struct.pack("!H", 1000), mask=True))
        assert await until(lambda: client.close_code() == 1000, 5)
        client.abort()
        await member.close()
        return p

    p = run(main(), timeout=40)
    log = ws_access(p)
    assert log["closed_by"] == "client" and log["close_code"] == 1000, log


def test_member_that_never_answers_is_closed_1001(proxy):
    async def main():
        member = RawMember(answer_pings=False)
        p = proxy(ka_conf(await member.start(), interval="300ms", timeout="600ms"))
        async with ws_connect(f"{p.ws_url}/quiet") as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            elapsed = time.monotonic() - started
            code, reason = ws.close_code, ws.close_reason
        assert [f[0] for f in member.frames].count(PING) >= 1 and all(f[2] for f in member.frames)
        await member.close()
        return p, elapsed, code, reason

    p, elapsed, code, reason = run(main(), timeout=30)
    assert code == 1001 and "did not answer a ping" in reason, (code, reason)
    # ping after 0.26-0.3 s (+ a sweep period, 75 ms), then 0.6 s (+ a period) without a pong
    assert 0.8 < elapsed < 2.5, elapsed
    log = ws_access(p)
    assert log["closed_by"] == "proxy" and log["close_code"] == 1001, log
    assert log["reason"] == "member did not answer a ping within 0.6s", log


def test_stopped_member_process_is_detected(members, proxy):
    """SIGSTOP: the member's kernel still acks TCP, but nothing answers: Close 1001."""
    m = members.ws("frozen")
    p = proxy(ka_conf(m.addr, interval="300ms", timeout="700ms"))

    async def main():
        async with ws_connect(f"{p.ws_url}/frozen") as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 5) == "before"
            await asyncio.sleep(1.0)  # pinged and answering: still open
            os.kill(m.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return time.monotonic() - started, ws.close_code
            finally:
                os.kill(m.proc.pid, signal.SIGCONT)

    elapsed, code = run(main(), timeout=30)
    assert code == 1001 and elapsed < 0.3 + 0.7 + 1.0, (code, elapsed)
    log = ws_access(p)
    assert log["closed_by"] == "proxy" and "member did not answer a ping within 0.7s" in log["reason"], log


def test_client_that_never_answers_member_gets_1001(members, proxy):
    m = members.ws("m")
    p = proxy(ka_conf(m.addr, interval="300ms", timeout="600ms"))

    async def main():
        client = RawClient(answer_pings=False)
        await client.connect(p.port, "/deaf")
        started = time.monotonic()
        assert await until(client.ended.is_set, 10), "the proxy did not drop the silent client"
        return time.monotonic() - started, client

    elapsed, client = run(main(), timeout=30)
    assert 0.8 < elapsed < 2.5, elapsed
    assert PING in client.opcodes()  # it was asked
    rec = m.wait_record(lambda r: r.get("path") == "/deaf", timeout=10)
    assert rec is not None and rec["rcvd_code"] == 1001, rec
    log = ws_access(p)
    assert log["closed_by"] == "proxy" and log["reason"] == "client did not answer a ping within 0.6s", log


def test_a_leg_that_keeps_sending_is_alive_without_its_pong(proxy):
    """Envoy's rule: data from the leg while we wait for its pong shows it alive."""
    async def main():
        member = RawMember(answer_pings=False)
        p = proxy(ka_conf(await member.start(), interval="200ms", timeout="500ms"))
        client = RawClient()
        await client.connect(p.port, "/chatty")
        await member.connected.wait()
        for i in range(20):  # 2 s of member data, 10 x the pong timeout, no pong
            member.send(frame(TEXT, b"tick %d" % i, mask=False))
            await asyncio.sleep(0.1)
        alive = not client.ended.is_set()
        assert await until(client.ended.is_set, 5)  # then silence: dead
        client.abort()
        await member.close()
        return p, alive, client

    p, alive, client = run(main(), timeout=30)
    assert alive and [f[3] for f in client.frames if f[0] == TEXT][:20] == [b"tick %d" % i for i in range(20)]
    assert client.close_code() == 1001
    assert "member did not answer a ping" in ws_access(p)["reason"]


@pytest.mark.parametrize("relay", ["track", "inspect"])
def test_a_leg_sending_one_large_frame_slowly_is_alive(proxy, relay):
    """Bytes of a frame still arriving show the leg alive too (inspect mode sees the frame
    only once it is whole, so it must count the reads themselves)."""
    async def main():
        member = RawMember(answer_pings=False)
        p = proxy(ka_conf(await member.start(), relay=relay, interval="200ms", timeout="500ms"))
        client = RawClient()
        await client.connect(p.port, "/large")
        await member.connected.wait()
        payload = os.urandom(200_000)
        whole = frame(BINARY, payload, mask=False)
        for i in range(0, len(whole), 10_000):  # 2 s for one frame: 4 x the pong timeout
            member.send(whole[i:i + 10_000])
            await asyncio.sleep(0.1)
        got = await until(lambda: any(f[0] == BINARY for f in client.frames), 5)
        alive = not client.ended.is_set()
        client.abort()
        await member.close()
        return got, alive, [f[3] for f in client.frames if f[0] == BINARY], payload

    got, alive, binaries, payload = run(main(), timeout=30)
    assert got and alive and binaries == [payload]


# ----------------------------------------------------------------------------- idle timeout


def test_idle_timeout_spares_a_websocket_alive_by_ping(members, proxy):
    """ws_idle_timeout 1 s, pings every 1.5 s (the silence between them is longer than the
    idle timeout): the WebSocket stays. The same route without pings is cut as before."""
    m = members.ws("echo")
    routes = [
        {"pool": "ws", "path_prefix": "/ka", "ws_idle_timeout": "1s", "ping_interval": "1500ms",
         "pong_timeout": "1s"},
        {"pool": "ws", "ws_idle_timeout": "1s"},
    ]
    p = proxy(site_conf({"ws": [m.addr]}, routes=routes))

    async def main():
        async with ws_connect(f"{p.ws_url}/ka") as kept, ws_connect(f"{p.ws_url}/plain") as cut:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(cut.recv(), 5)
            cut_after = time.monotonic() - started
            await asyncio.sleep(3.5 - cut_after)  # silent for 3.5 s: two pings, no data
            await kept.send("still here")
            echoed = await asyncio.wait_for(kept.recv(), 5)
            return cut_after, cut.close_code, echoed

    cut_after, cut_code, echoed = run(main(), timeout=30)
    assert cut_code == 1001 and 0.9 < cut_after < 2.0, (cut_code, cut_after)
    assert echoed == "still here"
    logs = p.access_logs("ws")
    assert any("idle timeout" in (r.get("reason") or "") for r in logs), logs


# ----------------------------------------------------------------------------- frame boundaries


def test_pings_wait_for_frame_boundaries_client_to_member(proxy):
    """The client sends a 1 MiB frame in 32 pieces over 1.6 s while pings are due every
    0.1 s: the member sees the frame intact and the pings only before and after it."""
    payload = os.urandom(1 << 20)

    async def main():
        member = RawMember()
        p = proxy(ka_conf(await member.start(), interval="100ms", timeout="5s"))
        client = RawClient()
        await client.connect(p.port, "/slow-up")
        await member.connected.wait()
        wire = frame(BINARY, payload, mask=True)
        step = len(wire) // 32 + 1
        for i in range(0, len(wire), step):
            client.send(wire[i:i + step], mid_frame=i + step < len(wire))
            await asyncio.sleep(0.05)
        assert await until(lambda: BINARY in member.opcodes(), 10)
        await asyncio.sleep(0.4)
        client.abort()
        await member.close()
        return member

    member = run(main(), timeout=40)
    ops = member.opcodes()
    big = ops.index(BINARY)
    assert member.frames[big][3] == payload and member.frames[big][2]
    assert set(ops) <= {PING, BINARY, CLOSE}, ops
    assert PING in ops[big + 1:], ops  # the ping that came due during the frame went after it
    assert ops[:big].count(PING) <= 3, ops  # none could go during the 1.6 s of the frame


def test_pings_wait_for_frame_boundaries_member_to_client(proxy):
    """The member sends a fragmented message slowly (two 512 KiB fragments, each in pieces)
    while pings to the client are due every 0.1 s: the websockets client (which fails the
    connection with 1002 on a bad frame) gets the message intact, and the pings went
    between the fragments, not inside them."""
    first, second = os.urandom(1 << 19), os.urandom(1 << 19)

    async def main():
        member = RawMember()
        p = proxy(ka_conf(await member.start(), interval="100ms", timeout="5s"))
        seen = []
        async with ws_connect(f"{p.ws_url}/slow-down") as ws:
            await member.connected.wait()
            original = ws.protocol.recv_frame  # watch the frames the library reads

            def recv_frame(f):
                seen.append(f.opcode.value)
                return original(f)

            ws.protocol.recv_frame = recv_frame
            for wire in (frame(BINARY, first, mask=False, fin=False), frame(CONT, second, mask=False)):
                step = len(wire) // 12 + 1
                for i in range(0, len(wire), step):
                    member.send(wire[i:i + step], mid_frame=i + step < len(wire))
                    await asyncio.sleep(0.05)
            message = await asyncio.wait_for(ws.recv(), 10)
            await ws.send("done")
            await asyncio.sleep(0.2)
        await member.close()
        return message, seen

    message, seen = run(main(), timeout=40)
    assert message == first + second
    data_at = [i for i, op in enumerate(seen) if op in (BINARY, CONT)]
    assert len(data_at) == 2, seen
    assert PING in seen[data_at[0] + 1:data_at[1]], seen  # between the fragments
    assert seen[:data_at[0]].count(PING) <= 3, seen


# ----------------------------------------------------------------------------- off


def test_keepalive_off_sends_no_pings(proxy):
    async def main():
        member = RawMember()
        p = proxy(site_conf({"ws": [await member.start()]}))
        client = RawClient()
        await client.connect(p.port, "/off")
        await member.connected.wait()
        await asyncio.sleep(1.0)
        client.send(frame(PONG, b"unsolicited", mask=True))  # relayed like any other frame
        assert await until(lambda: PONG in member.opcodes(), 5)
        client.abort()
        await member.close()
        return client, member

    client, member = run(main(), timeout=20)
    assert PING not in client.opcodes() and PING not in member.opcodes()
    assert [f for f in member.frames if f[0] != CLOSE] == [(PONG, True, True, b"unsolicited")]


def test_raw_route_asking_for_pings_is_refused(proxy):
    from .support import ProxyStartError

    with pytest.raises(ProxyStartError) as caught:
        proxy(site_conf({"ws": {"members": ["127.0.0.1:9"], "relay": "raw"}},
                        routes=[{"pool": "ws", "ping_interval": "20s"}]))
    assert "routes[0].ping_interval" in str(caught.value) and "track" in str(caught.value)


def test_pool_pings_are_ignored_on_its_raw_routes_with_a_warning(proxy):
    async def main():
        member = RawMember()
        p = proxy(site_conf({"ws": {"members": [await member.start()], "relay": "raw", "ping_interval": "200ms"}}))
        for _ in range(2):
            client = RawClient()
            await client.connect(p.port, "/raw")
            await member.connected.wait()
            await asyncio.sleep(0.6)
            client.abort()
        await member.close()
        return p, client, member

    p, client, member = run(main(), timeout=20)
    assert PING not in client.opcodes() and PING not in member.opcodes()
    warnings = [r for r in p.logs() if r.get("msg", "").startswith("ping_interval ignored")]
    assert len(warnings) == 1 and warnings[0]["route"] == "public.routes[0]", warnings
