"""ws check: a real WebSocket session: handshake, Ping, the matching Pong, Close 1000.

HAProxy can only be made to expect a 101 (anchors-features.md §1c: "WS-specific health
check", hand-built, and no anchor checks that the member answers frames). This one proves
the member speaks WebSocket end to end:

1. ``GET path`` with a random ``Sec-WebSocket-Key``; the answer must be a 101 with the right
   ``Sec-WebSocket-Accept`` (the proxy's own check, protocol.handshake.check_server_accept).
   No extension is offered, so the member's frames carry no RSV bits.
2. A masked Ping with a random payload; frames are read (FrameReader, unmasked as a
   server's must be) until the Pong that echoes it. Other frames (a welcome message, the
   member's own Pings) are skipped; a Close or the end of the stream fails the check.
3. The round trip Ping to Pong is the recorded RTT. Then a masked Close 1000, and close.

A member that completes the handshake but never answers the Ping fails by the timeout,
with the reason "timeout (pong)".
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

from wsproxy._speedups import FrameReader, build_close, build_frame
from wsproxy.errors import FrameError, HandshakeError, HttpError
from wsproxy.health.http import USER_AGENT
from wsproxy.health.probe import CheckFailed, Probe, close_quietly, connect
from wsproxy.protocol import http1
from wsproxy.protocol.frames import OP_CLOSE, OP_PING, OP_PONG, parse_close_payload
from wsproxy.protocol.handshake import check_server_accept

MAX_FRAME = 16 * 1024 * 1024  # a member's frame before the Pong may be this big (a snapshot)


def handshake_request(addr, path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
    ).encode("latin-1")


async def run(addr, health, probe: Probe, tls=None) -> None:
    """``tls``: the pool's tls.MemberTls; the check then speaks TLS (its handshake is in "connect")."""
    probe.phase = "connect"
    reader, writer = await connect(addr, tls)
    try:
        probe.phase = "handshake"
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        writer.write(handshake_request(addr, health.path, key))
        await _read_101(reader, key)
        probe.phase = "pong"
        payload = os.urandom(8)
        started = time.perf_counter_ns()
        writer.write(build_frame(OP_PING, payload, mask=True))
        await _read_pong(reader, payload)
        probe.rtt_us = (time.perf_counter_ns() - started) // 1000
        probe.phase = "close"
        writer.write(build_close(1000, mask=True))
    finally:
        await close_quietly(writer)


async def _read_101(reader: asyncio.StreamReader, key: str) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise CheckFailed("closed during the handshake" if exc.partial else "closed without a response") from None
    except asyncio.LimitOverrunError:
        raise CheckFailed("response head too large") from None
    parser = http1.ResponseParser()
    try:
        events = parser.feed(head)
    except HttpError as exc:
        raise CheckFailed(f"invalid response: {exc.reason}") from None
    answer = next((e for e in events if isinstance(e, http1.ResponseHead)), None)
    if answer is None:
        raise CheckFailed("invalid response head")
    if answer.status != 101:
        raise CheckFailed(f"status {answer.status}, not 101")
    try:
        check_server_accept(key, answer)
    except HandshakeError as exc:
        raise CheckFailed(exc.reason.replace("member's ", "")) from None


async def _read_pong(reader: asyncio.StreamReader, payload: bytes) -> None:
    frames = FrameReader(masked=False, max_size=MAX_FRAME)
    while True:
        data = await reader.read(65536)
        if not data:
            raise CheckFailed("closed before the pong")
        try:
            got = frames.feed(data)
        except FrameError as exc:
            raise CheckFailed(f"bad frame: {exc.reason}") from None
        for frame in got:
            if frame.opcode == OP_PONG and frame.payload == payload:
                return
            if frame.opcode == OP_CLOSE:
                code, _reason = parse_close_payload(frame.payload)  # FrameReader checked it
                raise CheckFailed(f"member sent Close {code} before the pong")
            # Anything else (data, an unsolicited Pong, the member's Ping) is skipped.
