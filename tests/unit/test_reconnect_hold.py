"""ReconnectRelay's held bytes: the client's bytes since the member last spoke, trimmed to
the start of the message being sent (never inside a message, whatever the fragmentation)."""

from __future__ import annotations

import asyncio
import types

from wsproxy.config.schema import ReconnectConfig
from wsproxy.proxy.reconnect import ReconnectRelay


class Ep:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.transport = None
        self.address = "test"

    def write(self, data) -> None:
        self.out += data

    def pause_reading(self, reason) -> None:
        pass

    def resume_reading(self, reason) -> None:
        pass


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # mask key 0: the payload as is


def make(buffer: int = 1 << 20):
    client, member = Ep(), Ep()
    relay = ReconnectRelay(client, member, rc=ReconnectConfig(5.0, buffer), pool=None,
                           pool_member=types.SimpleNamespace(addr="m:1"), request_head=b"", ws_key="k",
                           subprotocol=None, proxy_header=None, rsv=0, idle_timeout=0)
    return relay, client, member


def check(steps):
    async def go():
        relay, client, member = make()
        for who, data, expect in steps:
            relay.on_data(client if who == "c" else member, data)
            if expect is not None:
                assert bytes(relay.held) == expect, (who, data, bytes(relay.held), expect)
        return relay
    return asyncio.run(go())


def test_answered_messages_are_dropped_and_the_open_one_kept():
    m1, m2 = frame(1, b"one"), frame(2, b"x" * 300)
    f1, f2, f3 = frame(1, b"a", fin=False), frame(0, b"b", fin=False), frame(0, b"c")
    ping = frame(9, b"p")
    reply = b"\x81\x01r"
    check([
        ("c", m1, m1),
        ("m", reply, b""),  # answered
        ("c", m2[:100], m2[:100]),
        ("m", reply, m2[:100]),  # m2 was being sent: kept whole
        ("c", m2[100:], m2),
        ("m", reply, b""),
        ("c", f1 + f2, f1 + f2),
        ("m", reply, f1 + f2),  # inside a fragmented message: from its first frame
        ("c", ping, f1 + f2 + ping),
        ("m", reply, f1 + f2 + ping),
        ("c", f3[:3], f1 + f2 + ping + f3[:3]),
        ("m", reply, f1 + f2 + ping + f3[:3]),
        ("c", f3[3:] + m1, f1 + f2 + ping + f3 + m1),
        ("m", reply, b""),
        ("c", ping[:1], ping[:1]),  # a control frame outside a message, split in its header
        ("m", reply, ping[:1]),
        ("c", ping[1:], ping),
        ("m", reply, b""),
    ])


def test_big_frames_and_overflow():
    async def go():
        relay, client, member = make(buffer=100_000)
        big = frame(2, b"z" * 70_000)
        relay.on_data(client, big)
        relay.on_data(member, b"\x81\x01r")
        assert relay.held == bytearray() and relay.held_at == len(big)
        relay.on_data(client, big)
        assert relay.held is not None
        relay.on_data(client, big)  # 140 kB unanswered > 100 kB
        assert relay.held is None and relay.reconnect_off.startswith("buffer overflow")
        assert len(member.out) == 3 * len(big)  # relaying goes on unchanged
    asyncio.run(go())
