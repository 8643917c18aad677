"""The demo members (wsproxy/demo), talked to directly over real sockets.

The WebSocket client is built from wsproxy.protocol.frames; one test cross-checks the
backend with the `websockets` library (a test-only dependency).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import tomllib
from pathlib import Path

import pytest

from wsproxy.demo import DEMO_BACKENDS, bound_port, demo_config, start_backends, stop_backends
from wsproxy.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    build_close,
    build_frame,
)
from wsproxy.protocol.handshake import accept_key

HOST = "127.0.0.1"


def run_async(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 15))

    return wrapper


@contextlib.asynccontextmanager
async def backends():
    servers = await start_backends(HOST, [0, 0])
    try:
        yield [bound_port(s) for s in servers]
    finally:
        await stop_backends(servers)


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()  # the members close after each plain response
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return *parse_head(head), body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers


class RawWS:
    """A minimal WebSocket client: masked frames out, FrameReader in."""

    def __init__(self, reader, writer, leftover: bytes) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(masked=False)
        self.pending = list(self.frames.feed(leftover)) if leftover else []

    @classmethod
    async def connect(cls, port: int, extra: str | None = None) -> "RawWS":
        status, headers, ws = await cls.handshake(port, extra)
        assert status == 101, (status, headers)
        return ws

    @classmethod
    async def handshake(cls, port: int, extra: str | None = None, key: str | None = None):
        key = key or base64.b64encode(os.urandom(16)).decode()
        extra = extra if extra is not None else (
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(f"GET /ws HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = parse_head(head)
        if status == 101:
            assert headers["sec-websocket-accept"] == accept_key(key)
            assert headers["upgrade"].lower() == "websocket"
        return status, headers, cls(reader, writer, b"")

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(build_frame(opcode, payload, fin=fin, mask=True))

    def send_text(self, text: str) -> None:
        self.send(OP_TEXT, text.encode())

    async def recv(self):
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError
            self.pending.extend(self.frames.feed(data))
        return self.pending.pop(0)

    async def recv_json(self, skip_presence: bool = True) -> dict:
        while True:
            frame = await self.recv()
            assert frame.opcode == OP_TEXT, frame
            msg = json.loads(frame.payload)
            if not (skip_presence and msg["type"] == "presence"):
                return msg

    async def recv_eof(self) -> bool:
        """True when the server closed TCP (the client's socket is closed too)."""
        eof = await asyncio.wait_for(self.reader.read(), 5) == b""
        self.writer.close()
        return eof

    def abort(self) -> None:
        self.writer.transport.abort()


@run_async
async def test_whoami_names_each_member():
    async with backends() as ports:
        for name, port in zip(DEMO_BACKENDS, ports):
            status, headers, body = await http_get(port, "/whoami")
            assert status == 200
            assert headers["content-type"].startswith("application/json")
            assert json.loads(body) == {"member": name}


@run_async
async def test_page_is_served_as_html_and_self_contained():
    async with backends() as ports:
        status, headers, body = await http_get(ports[0], "/")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert int(headers["content-length"]) == len(body)
        page = body.decode()
        assert "<script>" in page and "/ws" in page and "reconnect" in page
        assert "http://" not in page and "https://" not in page  # no CDN, no external asset
        # HEAD: same headers, no body
        status, headers, body = await http_get(ports[0], "/", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@run_async
async def test_healthz_404_405():
    async with backends() as ports:
        assert (await http_get(ports[0], "/healthz"))[0] == 200
        assert (await http_get(ports[0], "/nope"))[0] == 404
        status, headers, _ = await http_get(ports[0], "/", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"


@run_async
async def test_welcome_names_the_member():
    async with backends() as ports:
        for name, port in zip(DEMO_BACKENDS, ports):
            ws = await RawWS.connect(port)
            welcome = await ws.recv_json()
            assert welcome == {"type": "welcome", "member": name, "conn": 1, "clients": 1}
            presence = await ws.recv_json(skip_presence=False)
            assert presence == {"type": "presence", "member": name, "clients": 1}
            ws.abort()


@run_async
async def test_broadcast_reaches_clients_of_the_same_member_only():
    async with backends() as ports:
        a1, a2 = await RawWS.connect(ports[0]), await RawWS.connect(ports[0])
        b1 = await RawWS.connect(ports[1])
        w1, w2, wb = await a1.recv_json(), await a2.recv_json(), await b1.recv_json()
        assert (w1["conn"], w2["conn"], wb["conn"]) == (1, 2, 1)
        a2.send_text("hello from two ✓")
        expected = {"type": "chat", "member": "member-a", "text": "hello from two ✓", "from": 2}
        assert await a1.recv_json() == expected
        assert await a2.recv_json() == expected  # the sender sees its own message too
        # fragmented text is reassembled
        a1.send(OP_TEXT, b"frag", fin=False)
        a1.send(0, b"mented", fin=True)
        assert (await a2.recv_json())["text"] == "fragmented"
        # member-b saw nothing: its next message is the answer to its own chat
        b1.send_text("b only")
        assert await b1.recv_json() == {"type": "chat", "member": "member-b", "text": "b only",
                                        "from": 1}
        for ws in (a1, a2, b1):
            ws.abort()


@run_async
async def test_ping_pong_and_close_echo():
    async with backends() as ports:
        ws = await RawWS.connect(ports[0])
        await ws.recv_json()
        ws.send(OP_PING, b"abc")
        frame = await ws.recv()
        while frame.opcode == OP_TEXT:  # presence may come first
            frame = await ws.recv()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"abc")
        ws.writer.write(build_close(1000, "bye", mask=True))
        frame = await ws.recv()
        assert frame.opcode == OP_CLOSE and frame.payload[:2] == (1000).to_bytes(2, "big")
        assert await ws.recv_eof()  # the server closes TCP after the Close handshake


@run_async
async def test_client_disappearing_is_noticed():
    async with backends() as ports:
        a1, a2 = await RawWS.connect(ports[0]), await RawWS.connect(ports[0])
        await a1.recv_json(), await a2.recv_json()
        a2.abort()
        while (msg := await a1.recv_json(skip_presence=False))["clients"] != 1:
            pass
        assert msg == {"type": "presence", "member": "member-a", "clients": 1}
        a1.abort()


@run_async
async def test_protocol_errors_close_the_connection():
    async with backends() as ports:
        ws = await RawWS.connect(ports[0])
        await ws.recv_json()
        ws.writer.write(build_frame(OP_TEXT, b"unmasked", mask=False))  # clients must mask
        while (frame := await ws.recv()).opcode != OP_CLOSE:
            pass
        assert int.from_bytes(frame.payload[:2], "big") == 1002
        assert await ws.recv_eof()

        ws = await RawWS.connect(ports[0])
        await ws.recv_json()
        ws.send(OP_TEXT, b"\xff\xfe")  # not UTF-8
        while (frame := await ws.recv()).opcode != OP_CLOSE:
            pass
        assert int.from_bytes(frame.payload[:2], "big") == 1007
        assert await ws.recv_eof()

        ws = await RawWS.connect(ports[0])
        await ws.recv_json()
        ws.send(OP_BINARY, b"\x00\x01")  # a chat takes text only
        while (frame := await ws.recv()).opcode != OP_CLOSE:
            pass
        assert int.from_bytes(frame.payload[:2], "big") == 1003
        assert await ws.recv_eof()


@run_async
async def test_bad_handshakes():
    async with backends() as ports:
        status, headers, ws = await RawWS.handshake(ports[0], extra="")  # plain GET /ws
        assert status == 426
        ws.abort()
        status, headers, ws = await RawWS.handshake(
            ports[0], "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n")
        assert status == 426 and headers["sec-websocket-version"] == "13"
        ws.abort()
        status, _, ws = await RawWS.handshake(
            ports[0], "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n")
        assert status == 400
        ws.abort()
        # the RFC 6455 sample key, with header names in odd case and Connection as a list
        status, headers, ws = await RawWS.handshake(
            ports[0], "upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            key="dGhlIHNhbXBsZSBub25jZQ==")
        assert status == 101
        assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        ws.abort()


@run_async
async def test_stop_backends_sends_1001():
    servers = await start_backends(HOST, [0])
    ws = await RawWS.connect(bound_port(servers[0]))
    await ws.recv_json()
    stopping = asyncio.create_task(stop_backends(servers))
    while (frame := await ws.recv()).opcode != OP_CLOSE:
        pass
    assert int.from_bytes(frame.payload[:2], "big") == 1001
    ws.writer.write(build_close(1001, mask=True))
    await stopping
    assert await ws.recv_eof()


@run_async
async def test_interoperates_with_the_websockets_library():
    websockets = pytest.importorskip("websockets")
    from websockets.asyncio.client import connect

    async with backends() as ports:
        async with connect(f"ws://{HOST}:{ports[1]}/ws") as ws:
            assert json.loads(await ws.recv())["member"] == "member-b"
            await ws.send("via websockets")
            while (msg := json.loads(await ws.recv()))["type"] != "chat":
                pass
            assert msg["text"] == "via websockets"
            await ws.ping(b"p")  # pong awaited by the library
        assert ws.close_code == 1000
        assert isinstance(websockets.__version__, str)


def test_demo_config_shape():
    cfg = demo_config(8080, [9001, 9002])
    listener = cfg["listeners"]["public"]
    assert listener["bind"] == "127.0.0.1:8080" and listener["mode"] == "http"
    assert listener["routes"] == [{"path": "/ws", "pool": "chat"}, {"pool": "chat"}]
    chat = cfg["pools"]["chat"]
    assert (chat["balance"], chat["members"]) == ("least_conn", ["127.0.0.1:9001", "127.0.0.1:9002"])
    assert chat["health"]["type"] == "http" and cfg["server"]["admin"] == "127.0.0.1:9901"
    assert demo_config(1, [2, 3], host="::1")["pools"]["chat"]["members"] == ["[::1]:2", "[::1]:3"]


def test_sample_conf_matches_demo_config():
    text = (Path(__file__).parents[2] / "wsproxy" / "demo" / "sample.conf").read_text()
    assert tomllib.loads(text) == demo_config(8080, [9001, 9002])


def test_demo_config_is_accepted_by_parse_config():
    try:
        from wsproxy.config import parse_config
    except ImportError:
        pytest.skip("wsproxy.config.parse_config not written yet")
    config = parse_config(demo_config(8080, [9001, 9002]), source="<demo>")
    assert config.pools["chat"].balance == "least_conn"
    assert [str(m.addr) for m in config.pools["chat"].members] == ["127.0.0.1:9001",
                                                                   "127.0.0.1:9002"]


def test_wsproxy_demo_serves_the_page_the_stats_page_and_the_api():
    """`wsproxy demo` as `make demo` runs it: members + proxy + admin, no setup."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from .support import REPO, base_env, free_port, port_open, wait_until

    port, a, b, admin = free_port(), free_port(), free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wsproxy", "demo", "--port", str(port),
                             "--backend-ports", f"{a},{b}", "--admin-port", str(admin)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO), env=base_env(),
                            start_new_session=True)
    try:
        assert wait_until(lambda: port_open(port) and port_open(admin), 15), proc.stderr.read1().decode()

        def get(url: str) -> bytes:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read()

        assert b"<html" in get(f"http://{HOST}:{port}/").lower()
        assert b"wsproxy" in get(f"http://{HOST}:{admin}/").lower()
        pools = wait_until(lambda: json.loads(get(f"http://{HOST}:{admin}/api/pools")), 5)
        members = pools["pools"]["chat"]["members"]
        assert [(m["addr"], m["state"]) for m in members] == [(f"{HOST}:{a}", "up"), (f"{HOST}:{b}", "up")]
        assert b"wsproxy_connections_total" in get(f"http://{HOST}:{admin}/metrics")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert f"http://{HOST}:{admin}/".encode() in out  # the stats URL is printed
    assert proc.returncode == 0
