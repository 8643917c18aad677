"""RelayCore, both twins on the same cases: what one read does (forward, count, notice the
first Close, call the subclass's hooks for the rare events, map backpressure)."""

from __future__ import annotations

import os
import random

import pytest

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import relay_core as py_relay_core
from wsproxy.protocol.frames import OP_BINARY, OP_TEXT, build_close, build_frame


def implementations():
    yield pytest.param((py_relay_core.RelayCore, py_frames.FrameTracker), id="py")
    try:
        from wsproxy._ext.frames import FrameTracker
        from wsproxy._ext.relay_core import RelayCore
    except ImportError:
        if not _speedups.NO_EXTENSIONS:
            raise  # a C build must have it
        return
    yield pytest.param((RelayCore, FrameTracker), id="c")


class FakeEndpoint:
    def __init__(self, name: str) -> None:
        self.name = name
        self.written = bytearray()
        self.closed = False
        self.paused: set[str] = set()

    def write(self, data) -> None:
        self.written += data

    def pause_reading(self, reason: str) -> None:
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self.paused.discard(reason)


@pytest.fixture(params=list(implementations()))
def make(request):
    core_class, tracker_class = request.param

    class Relay(core_class):
        __slots__ = ("calls",)

        def _client_violation(self, exc, data):
            self.calls.append(("client_violation", exc.close_code, bytes(data)))

        def _member_violation(self, exc, data):
            self.calls.append(("member_violation", exc.close_code, bytes(data)))

        def _member_answer(self, data):
            self.calls.append(("answer", bytes(data)))

        def _first_close(self, side, code, reason=None):
            self.calls.append(("first_close", side, code))

        def _shut(self, ep):
            self.calls.append(("shut", ep.name))

    def factory(track: bool = True, rsv: int = 0):
        client, member = FakeEndpoint("client"), FakeEndpoint("member")
        relay = Relay(client, member, tracker_class(True, rsv) if track else None,
                      tracker_class(False, rsv) if track else None)
        relay.calls = []
        return relay, client, member

    return factory


def chunks(data: bytes, rng: random.Random):
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        yield data[pos:pos + step]
        pos += step


def test_forwards_both_ways_in_any_chunking_and_counts(make):
    relay, client, member = make()
    rng = random.Random(7)
    up = b"".join(build_frame(OP_TEXT, os.urandom(n), mask=True) for n in (0, 5, 125, 126, 70000))
    down = b"".join(build_frame(OP_BINARY, os.urandom(n), mask=False) for n in (1, 300, 65536))
    for part in chunks(up, rng):
        relay.on_data(client, part)
    for part in chunks(down, rng):
        relay.on_data(member, part)
    assert bytes(member.written) == up and bytes(client.written) == down
    assert (relay.bytes_in, relay.bytes_out) == (len(up), len(down))
    assert (relay.c2u.frames, relay.u2c.frames) == (5, 3)
    assert relay.calls == [] and relay.activity


def test_raw_mode_forwards_anything(make):
    relay, client, member = make(track=False)
    junk = b"\xff\x00not a frame at all"
    relay.on_data(client, junk)
    relay.on_data(member, junk * 2)
    assert bytes(member.written) == junk and bytes(client.written) == junk * 2
    assert relay.c2u is None and not relay.track and relay.calls == []


def test_first_close_each_way_then_the_leg_is_shut(make):
    relay, client, member = make()
    close_down = build_close(1000, "bye", mask=False)
    relay.on_data(member, close_down)
    assert relay.member_sent_close and relay.closed_to_client
    assert relay.calls == [("first_close", "member", 1000)]
    relay.on_data(member, build_frame(OP_TEXT, b"late", mask=False))
    assert bytes(client.written) == close_down  # nothing after a Close
    relay.on_data(client, build_close(1000, mask=True))
    assert relay.client_sent_close and relay.closed_to_member
    assert relay.calls[1:] == [("first_close", "client", 1000), ("shut", "client")]


def test_violations_go_to_the_hooks_and_nothing_is_forwarded(make):
    relay, client, member = make()
    bad_up = build_frame(OP_TEXT, b"x", mask=False)  # a client frame must be masked
    relay.on_data(client, bad_up)
    assert relay.calls == [("client_violation", 1002, bad_up)]
    assert member.written == b""
    bad_down = build_frame(OP_TEXT, b"x", mask=True)  # a server frame must not be
    relay.on_data(member, bad_down)
    assert relay.calls[1] == ("member_violation", 1002, bad_down)
    assert client.written == b""


def test_broken_or_ended_legs_get_nothing(make):
    relay, client, member = make()
    relay.c2u_broken = True
    relay.on_data(client, build_frame(OP_TEXT, b"a", mask=True))
    assert member.written == b"" and relay.bytes_in == 0
    relay.ended = py_relay_core.LEG_CLIENT
    relay.on_data(member, build_frame(OP_TEXT, b"b", mask=False))
    assert client.written == b"" and relay.bytes_out == 0
    assert relay.u2c.frames == 1  # still tracked


def test_answer_mode_hands_member_bytes_to_the_hook(make):
    relay, client, member = make()
    relay.answer = object()
    relay.on_data(member, b"whatever")
    assert relay.calls == [("answer", b"whatever")] and client.written == b""


def test_backpressure_pauses_the_other_leg(make):
    relay, client, member = make()
    relay.on_pause_writing(member)
    assert client.paused == {"peer"} and not member.paused
    relay.on_resume_writing(member)
    relay.on_pause_writing(client)
    assert member.paused == {"peer"} and not client.paused
    relay.on_resume_writing(client)
    assert not member.paused


def test_memoryview_and_bytearray_input(make):
    relay, client, member = make()
    frame = build_frame(OP_TEXT, b"hello", mask=True)
    relay.on_data(client, bytearray(frame[:3]))
    relay.on_data(client, memoryview(frame)[3:])
    assert bytes(member.written) == frame and relay.c2u.frames == 1


def test_fields_are_writable_like_plain_attributes(make):
    relay, _, _ = make()
    relay.ended |= py_relay_core.LEG_MEMBER
    relay.shut = py_relay_core.LEG_BOTH
    relay.closed_to_member = True
    relay.activity = False
    assert (relay.ended, relay.shut, relay.closed_to_member, relay.activity) == (2, 3, True, False)
    with pytest.raises(FrameError):
        relay.c2u.feed(b"\x8f\x80\x00\x00\x00\x00")  # reserved opcode
