"""WebSocket through the proxy: echo of every size class, fragments, ping/pong, bad
handshakes, origins, member loss (1014), client loss (1001), protocol violations (1002),
backpressure, SIGTERM drain (1001), access log, and the pure-Python build."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import threading
import time

import pytest
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support import (
    HOST,
    FrameParser,
    build_frame,
    close_code_of,
    close_payload,
    connect,
    raw_request,
    raw_ws_connect,
    read_response,
    recv_frames_until,
    run,
    site_conf,
    ws_handshake_request,
    ws_key,
)

MiB = 1024 * 1024
SIZES = [0, 1, 125, 126, 65535, 65536, MiB, 16 * MiB]


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    return _ws_connect(url, **kw)


def text_of(n: int) -> str:
    return base64.b64encode(os.urandom(n * 3 // 4 + 3)).decode()[:n]


@pytest.fixture
def ws_site(members, proxy):
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}))
    return p, m


async def _echo_sizes(url: str, sizes, compression=None) -> None:
    async with ws_connect(url, compression=compression) as ws:
        for n in sizes:
            b = os.urandom(n)
            await ws.send(b)
            got = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(got, bytes) and len(got) == n and got == b, n
            t = text_of(n)
            await ws.send(t)
            got = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(got, str) and got == t, n
    assert ws.close_code == 1000


# ----------------------------------------------------------------------------- echo

@pytest.mark.parametrize("size", SIZES)
def test_ws_echo_sizes(ws_site, size):
    p, _ = ws_site
    run(_echo_sizes(f"{p.ws_url}/echo", [size]))


def test_ws_echo_all_sizes_one_connection_with_deflate_offered(ws_site):
    """Default client settings (permessage-deflate offered and accepted by the member)."""
    p, _ = ws_site
    run(_echo_sizes(f"{p.ws_url}/echo", [0, 1, 125, 126, 65535, 65536, MiB], compression="deflate"))


def test_ws_fragmented_messages(ws_site):
    p, _ = ws_site

    async def main():
        async with ws_connect(f"{p.ws_url}/echo", compression=None) as ws:
            text_parts = ["frag", "", "men", "ted ✓", text_of(70000)]

            async def text_frags():
                for part in text_parts:
                    yield part
                    await asyncio.sleep(0.01)

            await ws.send(text_frags())
            assert await asyncio.wait_for(ws.recv(), 10) == "".join(text_parts)

            bin_parts = [os.urandom(n) for n in (1, 0, 125, 126, 65536, 3)]

            async def bin_frags():
                for part in bin_parts:
                    yield part

            await ws.send(bin_frags())
            assert await asyncio.wait_for(ws.recv(), 10) == b"".join(bin_parts)
            # a ping interleaved between fragments of a message is legal
            await ws.send("after")
            assert await asyncio.wait_for(ws.recv(), 10) == "after"

    run(main())


def test_ws_ping_pong(ws_site):
    p, _ = ws_site

    async def main():
        async with ws_connect(f"{p.ws_url}/echo") as ws:
            for payload in (b"", b"abc", os.urandom(125)):
                waiter = await ws.ping(payload)
                latency = await asyncio.wait_for(waiter, 5)
                assert latency >= 0

    run(main())


def test_ws_raw_ping_pong_payload(ws_site):
    p, _ = ws_site
    s, leftover = raw_ws_connect(p.port, "/echo")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(0x9, b"ping-payload"))
        frame, _ = recv_frames_until(s, parser, lambda f: f[0] == 0xA, timeout=5)
        assert frame is not None and frame[2] == b"ping-payload"


# ----------------------------------------------------------------------------- handshakes

def test_ws_handshake_missing_key_400(ws_site):
    p, _ = ws_site
    r = raw_request(p.port, ws_handshake_request("/echo", key=None))
    assert r.status == 400


def test_ws_handshake_bad_version_426(ws_site):
    p, _ = ws_site
    r = raw_request(p.port, ws_handshake_request("/echo", key=ws_key(), version="8"))
    assert r.status == 426
    assert r.header("Sec-WebSocket-Version") == "13"


def test_ws_allowed_origins(members, proxy):
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}, routes=[
        {"path_prefix": "/live/", "pool": "ws", "allowed_origins": ["https://good.example"]},
        {"pool": "ws"},
    ]))

    async def main():
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(f"{p.ws_url}/live/x", origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
        async with ws_connect(f"{p.ws_url}/live/x", origin="https://good.example") as ws:
            await ws.send("ok")
            assert await asyncio.wait_for(ws.recv(), 5) == "ok"

    run(main())
    # the member never saw the refused handshake
    assert [r["path"] for r in m.records()] in ([], ["/live/x"])
    rec = m.wait_record(lambda r: r["path"] == "/live/x", timeout=5)
    assert rec is not None
    assert len([r for r in m.records() if r["path"] == "/live/x"]) == 1


# ----------------------------------------------------------------------------- member / client loss

def test_member_killed_mid_stream_client_gets_1014(ws_site):
    p, m = ws_site

    async def main():
        async with ws_connect(f"{p.ws_url}/echo") as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 5) == "before"
            m.kill()  # SIGKILL: no Close frame from the member, just a dead socket
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            exc = info.value
            assert exc.rcvd is not None, "abrupt close: the proxy sent no Close frame"
            assert exc.rcvd.code == 1014

    run(main())


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_disappears_member_gets_1001(ws_site, how):
    p, m = ws_site
    s, leftover = raw_ws_connect(p.port, "/gone")
    parser = FrameParser()
    parser.feed(leftover)
    s.sendall(build_frame(0x1, b"hello"))
    frame, _ = recv_frames_until(s, parser, lambda f: f[0] == 0x1, timeout=5)
    assert frame is not None and frame[2] == b"hello"
    if how == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # no Close frame
    rec = m.wait_record(lambda r: r["path"] == "/gone", timeout=10)
    assert rec is not None, "the member never saw the connection end"
    assert rec["rcvd_code"] == 1001, rec


def test_client_protocol_violation_1002(ws_site):
    p, m = ws_site
    s, leftover = raw_ws_connect(p.port, "/bad")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(0x1, b"fine"))
        frame, _ = recv_frames_until(s, parser, lambda f: f[0] == 0x1, timeout=5)
        assert frame is not None and frame[2] == b"fine"
        s.sendall(build_frame(0x3, b"reserved opcode"))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == 0x8, timeout=5)
        assert frame is not None, f"no Close frame, got {seen}"
        assert close_code_of(frame) == 1002
    rec = m.wait_record(lambda r: r["path"] == "/bad", timeout=10)
    assert rec is not None
    assert rec["rcvd_code"] == 1001, rec  # the member got a real Close frame: the client went away
    assert rec["messages"] == 1  # the bad frame itself was not passed on as a message


def test_client_unmasked_frame_1002(ws_site):
    p, m = ws_site
    s, leftover = raw_ws_connect(p.port, "/unmasked")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(0x1, b"unmasked", mask=False))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == 0x8, timeout=5)
        assert frame is not None, f"no Close frame, got {seen}"
        assert close_code_of(frame) == 1002


# ----------------------------------------------------------------------------- backpressure

def test_slow_reader_proxy_memory_bounded(ws_site):
    """The member pushes 200 MiB to a client that reads very slowly at first: the proxy must
    pause reading from the member instead of buffering (RSS grows < 50 MB)."""
    p, m = ws_site
    total = 200 * MiB
    # warm up (lazy imports, first-connection allocations) before taking the baseline
    s0, _ = raw_ws_connect(p.port, "/flood?mb=1")
    with s0:
        parser0 = FrameParser(keep_payload=False)
        recv_frames_until(s0, parser0, lambda f: f[0] == 0x1, timeout=10)
    time.sleep(0.3)
    baseline = p.rss_kb()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], p.rss_kb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        s, leftover = raw_ws_connect(p.port, "/flood?mb=200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        with s:
            parser = FrameParser(keep_payload=False)
            received = 0
            done = False
            for fr in parser.feed(leftover):
                received += fr[3] if fr[0] == 0x2 else 0
            # phase 1: do not read at all for 2 s
            time.sleep(2.0)
            # phase 2: read 16 KiB every 10 ms for 2 s
            s.settimeout(5)
            t_end = time.monotonic() + 2.0
            while time.monotonic() < t_end:
                data = s.recv(16384)
                assert data, "connection closed during the flood"
                for fr in parser.feed(data):
                    received += fr[3] if fr[0] == 0x2 else 0
                time.sleep(0.01)
            slow_received = received
            # phase 3: read as fast as possible until the member's "done"
            s.settimeout(30)
            t_end = time.monotonic() + 60
            while not done and time.monotonic() < t_end:
                data = s.recv(1 << 20)
                assert data, f"connection closed after {received} bytes"
                for fr in parser.feed(data):
                    if fr[0] == 0x2:
                        received += fr[3]
                    elif fr[0] == 0x1:
                        done = True
            s.sendall(build_frame(0x8, close_payload(1000)))
    finally:
        stop.set()
        sampler.join(2)
    assert done and received == total, (received, total)
    assert slow_received < total / 2, "the client was not slow enough to test anything"
    growth_mb = (peak[0] - baseline) / 1024
    print(f"proxy RSS baseline {baseline / 1024:.1f} MB, peak {peak[0] / 1024:.1f} MB, "
          f"{slow_received / MiB:.1f} MiB read during the slow phases")
    assert growth_mb < 50, f"proxy RSS grew by {growth_mb:.1f} MB while 200 MiB went through"


def test_fast_sender_slow_member_proxy_memory_bounded(ws_site):
    """The client pushes 200 MiB to a member that reads nothing for 2 s: the proxy must stop
    reading from the client (RSS grows < 50 MB) and deliver every byte afterwards."""
    p, m = ws_site
    total, chunk = 200 * MiB, 64 * 1024
    run(_echo_sizes(f"{p.ws_url}/warmup", [MiB]))
    time.sleep(0.3)
    baseline = p.rss_kb()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], p.rss_kb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    block = os.urandom(chunk)

    async def main():
        async with ws_connect(f"{p.ws_url}/slowread?seconds=2", compression=None,
                              write_limit=chunk) as ws:
            t0 = time.monotonic()
            sent = 0
            sent_in_first_2s = None
            while sent < total:
                await ws.send(block)
                sent += chunk
                if sent_in_first_2s is None and time.monotonic() - t0 >= 1.5:
                    sent_in_first_2s = sent
            await ws.send("end")
            answer = await asyncio.wait_for(ws.recv(), 60)
            return int(answer), sent_in_first_2s

    try:
        count, early = run(main(), timeout=90)
    finally:
        stop.set()
        sampler.join(2)
    assert count == total
    assert early is not None and early < total / 2, "the sender was never held back"
    growth_mb = (peak[0] - baseline) / 1024
    assert growth_mb < 50, f"proxy RSS grew by {growth_mb:.1f} MB while 200 MiB went through"


# ----------------------------------------------------------------------------- shutdown

def test_sigterm_closes_websockets_1001_and_exits_0(ws_site):
    p, m = ws_site
    n = 3
    codes: list = []

    async def main():
        conns = [await ws_connect(f"{p.ws_url}/term{i}").__aenter__() for i in range(n)]
        for i, ws in enumerate(conns):
            await ws.send(f"m{i}")
            assert await asyncio.wait_for(ws.recv(), 5) == f"m{i}"
        os.kill(p.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()

        async def wait_close(ws):
            try:
                await asyncio.wait_for(ws.recv(), 10)
                return "message"
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None

        codes.extend(await asyncio.gather(*(wait_close(ws) for ws in conns)))
        return time.monotonic() - t0

    run(main())
    assert codes == [1001] * n, codes
    t0 = time.monotonic()
    try:
        rc = p.proc.wait(2 + 3)  # grace = 2s, plus slack
    except Exception:
        pytest.fail(f"proxy still running {time.monotonic() - t0:.1f}s after the Close frames")
    assert rc == 0, p.stderr_text()[-3000:]
    # both legs: the member got a Close 1001 too
    for i in range(n):
        rec = m.wait_record(lambda r, i=i: r["path"] == f"/term{i}", timeout=5)
        assert rec is not None and rec["rcvd_code"] == 1001, rec


def test_sigterm_idle_proxy_exits_0_quickly(ws_site):
    p, _ = ws_site
    t0 = time.monotonic()
    os.kill(p.proc.pid, signal.SIGTERM)
    rc = p.proc.wait(5)
    assert rc == 0
    assert time.monotonic() - t0 < 3


# ----------------------------------------------------------------------------- access log

def test_access_log_ws_session(ws_site):
    p, m = ws_site
    n = 5

    async def main():
        async with ws_connect(f"{p.ws_url}/logged?x=1", compression=None) as ws:
            for i in range(n):
                await ws.send(f"msg{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"msg{i}"
            await asyncio.wait_for(await ws.ping(b"p"), 5)
            await ws.close(1000)

    run(main())
    line = p.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "ws", timeout=5)
    assert line, p.stderr_text()[-3000:]
    assert line["path"] in ("/logged", "/logged?x=1")
    assert line["pool"] == "ws"
    assert line["member"] == m.addr
    assert line["listener"] == "public"
    assert line["status"] == 101
    # every frame on the wire: in = n data + ping + Close; out = n echoes + pong + Close
    assert line["frames_in"] == n + 2, line
    assert line["frames_out"] == n + 2, line
    assert line["close_code"] == 1000
    assert line["closed_by"] == "client"
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    assert str(line["client"]).startswith("127.0.0.1")
    for key in ("ts", "level", "msg"):
        assert key in line


def test_access_log_http_request(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"web": [a.addr]}))
    body = os.urandom(1000)
    import http.client

    c = http.client.HTTPConnection(HOST, p.port, timeout=10)
    c.request("POST", "/echo?q=1", body=body)
    r = c.getresponse()
    assert r.read() == body
    c.close()
    line = p.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "http", timeout=5)
    assert line, p.stderr_text()[-3000:]
    assert line["status"] == 200
    assert line["method"] == "POST"
    assert line["path"] in ("/echo", "/echo?q=1")
    assert line["pool"] == "web" and line["member"] == a.addr
    assert 1000 <= line["bytes_in"] <= 1000 + 4096, line
    assert 1000 <= line["bytes_out"] <= 1000 + 4096, line


# ----------------------------------------------------------------------------- pure-Python build

def test_pure_python_build_ws_echo(members, proxy):
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}), env={"WSPROXY_NO_EXTENSIONS": "1"})
    run(_echo_sizes(f"{p.ws_url}/echo", [0, 1, 125, 126, 65535, 65536, MiB, 16 * MiB]))

    async def frags():
        async with ws_connect(f"{p.ws_url}/echo") as ws:
            async def parts():
                for part in ("a", "b" * 70000, "c"):
                    yield part
            await ws.send(parts())
            assert await asyncio.wait_for(ws.recv(), 10) == "a" + "b" * 70000 + "c"

    run(frags())
    # the violation path of the pure tracker too
    s, leftover = raw_ws_connect(p.port, "/bad")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(0x3, b"x"))
        frame, _ = recv_frames_until(s, parser, lambda f: f[0] == 0x8, timeout=5)
        assert frame is not None and close_code_of(frame) == 1002


# ----------------------------------------------------------------------------- more relays

def test_raw_relay_route_echo(members, proxy):
    """A route with relay = "raw" splices bytes: echo still works, fragments included."""
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}, routes=[{"path_prefix": "/raw/", "pool": "ws",
                                                  "relay": "raw"}, {"pool": "ws"}]))
    run(_echo_sizes(f"{p.ws_url}/raw/echo", [0, 126, 65536, MiB]))
    line = p.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "ws", timeout=5)
    assert line and line["close_code"] in (1000, None), line


def test_member_close_code_passed_to_client(ws_site):
    p, m = ws_site

    async def main():
        async with ws_connect(f"{p.ws_url}/close?code=4321&reason=bye-now") as ws:
            await ws.send("x")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4321, "bye-now")

    run(main())
    line = p.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "ws", timeout=5)
    assert line and line["close_code"] == 4321 and line["closed_by"] == "member", line


def test_aiohttp_member_websocket(members, proxy):
    """A second WebSocket server implementation (aiohttp) behind the proxy."""
    a = members.http("a")
    p = proxy(site_conf({"web": [a.addr]}))
    run(_echo_sizes(f"{p.ws_url}/ws", [0, 125, 126, 65536, MiB]))


def test_many_concurrent_websockets(ws_site):
    p, _ = ws_site
    n_conns, n_msgs = 200, 10

    async def one(i):
        async with ws_connect(f"{p.ws_url}/c{i}", compression=None) as ws:
            for j in range(n_msgs):
                await ws.send(f"{i}:{j}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"{i}:{j}"
        return ws.close_code

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n_conns)))

    assert run(main(), timeout=60) == [1000] * n_conns


def test_least_conn_spreads_websockets(members, proxy):
    a, b = members.ws("a"), members.ws("b")
    p = proxy(site_conf({"ws": {"balance": "least_conn", "members": [a.addr, b.addr]}}))

    async def main():
        conns = []
        try:
            names = []
            for _ in range(6):
                ws = await ws_connect(f"{p.ws_url}/whoami").__aenter__()
                conns.append(ws)
                names.append(await asyncio.wait_for(ws.recv(), 5))
            return names
        finally:
            for ws in conns:
                await ws.close()

    names = run(main())
    assert sorted(names) == ["a"] * 3 + ["b"] * 3, names


def test_upgrade_after_http_request_on_same_connection(ws_site):
    p, _ = ws_site
    with connect(p.port) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
        f = s.makefile("rb")
        r = read_response(f)
        assert (r.status, r.body) == (200, b"w")
        s.sendall(ws_handshake_request("/echo", key=ws_key()))
        r = read_response(f, head_request=True)
        assert r.status == 101
        parser = FrameParser()  # nothing follows the 101 until we speak: f holds no bytes
        s.sendall(build_frame(0x1, b"upgraded"))
        frame, _ = recv_frames_until(s, parser, lambda fr: fr[0] == 0x1, timeout=5)
        assert frame is not None and frame[2] == b"upgraded"
