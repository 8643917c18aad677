"""RelayCore, both twins on the same cases: what one read does (forward, count, notice the
first Close, call the subclass's hooks for the rare events, map backpressure), and the legs:
attach() making them the transports' protocols, reads through the shared buffer (always
copied before a transport sees them), events passed on, and, in the compiled twin, direct
sends to a real socket with partial writes and errors."""

from __future__ import annotations

import os
import random
import socket

import pytest

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import relay_core as py_relay_core
from wsproxy.protocol.frames import OP_BINARY, OP_TEXT, build_close, build_frame


def implementations():
    yield pytest.param((py_relay_core.RelayCore, py_frames.FrameTracker, py_relay_core), id="py")
    try:
        from wsproxy._ext import relay_core as c_relay_core
        from wsproxy._ext.frames import FrameTracker
        from wsproxy._ext.relay_core import RelayCore
    except ImportError:
        if not _speedups.NO_EXTENSIONS:
            raise  # a C build must have it
        return
    yield pytest.param((RelayCore, FrameTracker, c_relay_core), id="c")


class FakeTransport:
    """What attach() and the legs use of an asyncio transport. ``sock``: a real socket for
    the compiled twin's direct sends; ``paused``: pause_writing was already called (under
    the old limits), so new limits do not call it again, as in asyncio and uvloop."""

    def __init__(self, sock=None, *, tls: bool = False, buffered: int = 0, paused: bool = False) -> None:
        self.sock = sock
        self.tls = tls
        self.buffered = buffered
        self.paused = paused
        self.protocol = None
        self.limits = None
        self.closing = False

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.limits = (high, low)
        if self.buffered > high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name, default=None):
        if name == "sslcontext":
            return object() if self.tls else None
        if name == "socket":
            return self.sock
        return default

    def is_closing(self) -> bool:
        return self.closing


class FakeEndpoint:
    def __init__(self, name: str, transport=None) -> None:
        self.name = name
        self.written = bytearray()
        self.writes: list[type] = []  # the type of every object written
        self.closed = False
        self.paused: set[str] = set()
        self.transport = transport
        self.events: list[tuple] = []

    def write(self, data) -> None:
        self.writes.append(type(data))
        self.written += data

    def eof_received(self):
        self.events.append(("eof",))
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.events.append(("lost", exc))

    def pause_reading(self, reason: str) -> None:
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        self.paused.discard(reason)


@pytest.fixture(params=list(implementations()))
def make(request):
    core_class, tracker_class, module = request.param

    class Relay(core_class):
        __slots__ = ("calls", "hook_data")

        def _client_violation(self, exc, data):
            self.calls.append(("client_violation", exc.close_code, bytes(data)))
            self.hook_data.append(data)

        def _member_violation(self, exc, data):
            self.calls.append(("member_violation", exc.close_code, bytes(data)))
            self.hook_data.append(data)

        def _member_answer(self, data):
            self.calls.append(("answer", bytes(data)))
            self.hook_data.append(data)

        def _first_close(self, side, code, reason=None):
            self.calls.append(("first_close", side, code))

        def _shut(self, ep):
            self.calls.append(("shut", ep.name))

    def factory(track: bool = True, rsv: int = 0, client_transport=None, member_transport=None):
        client = FakeEndpoint("client", client_transport)
        member = FakeEndpoint("member", member_transport)
        relay = Relay(client, member, tracker_class(True, rsv) if track else None,
                      tracker_class(False, rsv) if track else None)
        relay.calls = []
        relay.hook_data = []
        return relay, client, member

    factory.compiled = module.__name__.startswith("wsproxy._ext.")
    factory.module = module
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


# ----------------------------------------------------------------------------- legs


def read(leg, data: bytes) -> None:
    """One read as a transport does it: into get_buffer(), then buffer_updated(n)."""
    buf = leg.get_buffer(-1)
    memoryview(buf)[:len(data)] = data
    leg.buffer_updated(len(data))


def attached(make, track: bool = True, client_sock=None, member_sock=None, **kw):
    relay, client, member = make(track, client_transport=FakeTransport(client_sock, **kw),
                                 member_transport=FakeTransport(member_sock, **kw))
    relay.attach()
    return relay, client, member


def test_attach_makes_a_leg_the_protocol_of_each_transport(make):
    relay, client, member = attached(make)
    legs = relay.client_leg, relay.member_leg
    assert client.transport.protocol is legs[0] and member.transport.protocol is legs[1]
    assert all(type(leg) is relay.Leg for leg in legs)
    assert (legs[0].is_client, legs[1].is_client) == (True, False)
    assert (legs[0].ep, legs[1].ep, legs[0].relay) == (client, member, relay)
    # high=0, low=0: pause_writing as soon as anything is buffered, resume when drained
    assert client.transport.limits == member.transport.limits == (0, 0)
    assert not legs[0].pending and not client.paused and not member.paused
    relay.attach()  # a second call changes nothing
    assert (relay.client_leg, relay.member_leg) == legs


@pytest.mark.parametrize("already_paused", [False, True])
def test_attach_with_unsent_bytes_pauses_the_other_leg(make, already_paused):
    """The 101 (say) is still in the client transport: direct sends to it must wait, and
    reading from the member pauses, whether or not the transport calls pause_writing anew."""
    relay, client, member = make(client_transport=FakeTransport(buffered=129, paused=already_paused),
                                 member_transport=FakeTransport())
    relay.attach()
    assert relay.client_leg.pending and member.paused == {"peer"} and not client.paused
    relay.client_leg.resume_writing()
    assert not relay.client_leg.pending and not member.paused


def test_closed_or_closing_endpoints_keep_their_protocol(make):
    relay, client, member = make(client_transport=FakeTransport(), member_transport=FakeTransport())
    client.closed = True
    member.transport.closing = True
    relay.attach()
    assert client.transport.protocol is None and member.transport.protocol is None
    assert relay.client_leg.fd == -1 and relay.member_leg.fd == -1


def test_reads_through_the_shared_buffer_reach_the_other_leg_as_copies(make):
    relay, client, member = attached(make)
    up = build_frame(OP_TEXT, os.urandom(3000), mask=True)
    down = build_frame(OP_BINARY, os.urandom(70000), mask=False)
    read(relay.client_leg, up[:1000])
    read(relay.client_leg, up[1000:])
    read(relay.member_leg, down)
    # the buffer is reused by the next read: what was forwarded must not change with it
    memoryview(relay.client_leg.get_buffer(-1))[:100] = b"\xee" * 100
    assert bytes(member.written) == up and bytes(client.written) == down
    assert set(member.writes) == set(client.writes) == {bytes}
    assert (relay.bytes_in, relay.bytes_out) == (len(up), len(down))
    assert (relay.c2u.frames, relay.u2c.frames) == (1, 1) and relay.activity


def test_one_read_buffer_for_every_leg_of_the_thread(make):
    a, _, _ = attached(make)
    b, _, _ = attached(make, track=False)
    buffers = {id(leg.get_buffer(-1)) for leg in (a.client_leg, a.member_leg, b.client_leg, b.member_leg)}
    assert len(buffers) == 1
    buf = a.client_leg.get_buffer(65536)
    assert len(buf) == make.module.READ_BUFFER_SIZE >= 65536
    assert not memoryview(buf).readonly


def test_buffer_updated_violation_gives_the_hook_a_bytes_copy(make):
    relay, client, member = attached(make)
    good = build_frame(OP_TEXT, b"ok", mask=True)
    bad = build_frame(OP_TEXT, b"x", mask=False)  # unmasked client frame
    read(relay.client_leg, good + bad)
    assert relay.calls == [("client_violation", 1002, good + bad)]
    assert type(relay.hook_data[0]) is bytes
    relay.answer = object()
    read(relay.member_leg, b"member answer")
    assert relay.calls[1] == ("answer", b"member answer") and type(relay.hook_data[1]) is bytes


def test_raw_mode_buffered_reads(make):
    relay, client, member = attached(make, track=False)
    read(relay.client_leg, b"\xffanything")
    read(relay.member_leg, b"at all")
    assert (bytes(member.written), bytes(client.written)) == (b"\xffanything", b"at all")


def test_leg_events_go_to_the_endpoint_and_the_relay(make):
    relay, client, member = attached(make)
    leg = relay.member_leg
    leg.pause_writing()
    assert leg.pending and client.paused == {"peer"}
    leg.resume_writing()
    assert not leg.pending and not client.paused
    assert leg.eof_received() is False
    exc = ConnectionResetError()
    leg.connection_lost(exc)
    assert member.events == [("eof",), ("lost", exc)] and leg.fd == -1 and member.closed
    leg.connection_made(member.transport)  # accepted and ignored


def test_data_received_fallback(make):
    relay, client, member = attached(make)
    frame = build_frame(OP_TEXT, b"not buffered", mask=True)
    relay.client_leg.data_received(frame)
    assert bytes(member.written) == frame and relay.c2u.frames == 1


def test_buffer_updated_outside_the_buffer_is_refused(make):
    relay, _, _ = attached(make)
    relay.client_leg.get_buffer(-1)
    with pytest.raises(ValueError):
        relay.client_leg.buffer_updated(make.module.READ_BUFFER_SIZE + 1)


# ----------------------------------------------------------------------------- direct sends (C)


@pytest.fixture
def pair():
    """A connected pair of stream sockets: [0] is the relay's side, [1] the peer's."""
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def test_plain_sockets_get_direct_sends_in_the_compiled_twin_only(make, pair):
    relay, client, member = attached(make, member_sock=pair[0])
    frame = build_frame(OP_BINARY, os.urandom(5000), mask=True)
    read(relay.client_leg, frame)
    if make.compiled:
        assert relay.member_leg.fd == pair[0].fileno()
        assert drain(pair[1]) == frame and member.written == b""
    else:
        assert relay.member_leg.fd == -1  # the pure twin always copies through the transport
        assert bytes(member.written) == frame and drain(pair[1]) == b""
    assert relay.bytes_in == len(frame)


def test_tls_transports_get_limits_that_pause_only_while_something_is_buffered(make):
    # An SSL transport pauses at size >= high (a plain one at size > high): with (0, 0) it would
    # pause after every write and, on a one-way stream, never resume (issue #7's 1 MiB over wss).
    relay, client, member = attached(make, tls=True)
    assert client.transport.limits == member.transport.limits == (1, 0)
    assert not client.paused and not member.paused


def test_tls_transports_get_no_direct_sends(make, pair):
    relay, _, member = attached(make, member_sock=pair[0], tls=True)
    read(relay.client_leg, b"\x82\x80abcd")
    assert relay.member_leg.fd == -1 and bytes(member.written) == b"\x82\x80abcd"


def compiled_only(make):
    if not make.compiled:
        pytest.skip("direct sends are the compiled twin's")


def test_partial_write_sends_the_rest_through_the_transport(make, pair):
    compiled_only(make)
    relay, _, member = attached(make, track=False, member_sock=pair[0])
    pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = os.urandom(make.module.READ_BUFFER_SIZE)
    for _ in range(4):
        read(relay.client_leg, data)  # the peer reads nothing: the socket fills up
    received = drain(pair[1])
    assert 0 < len(received) < 4 * len(data)
    assert received + bytes(member.written) == data * 4  # in order, nothing lost
    assert set(member.writes) == {bytes}


def test_pending_transport_gets_everything_until_it_drains(make, pair):
    """Bytes the transport holds must go out first: while pending, no direct send."""
    compiled_only(make)
    relay, _, member = attached(make, track=False, member_sock=pair[0])
    relay.member_leg.pause_writing()
    read(relay.client_leg, b"queued")
    assert bytes(member.written) == b"queued" and drain(pair[1]) == b""
    relay.member_leg.resume_writing()
    read(relay.client_leg, b"direct")
    assert drain(pair[1]) == b"direct" and bytes(member.written) == b"queued"


def test_send_error_hands_over_to_the_transport_and_stops_direct_sends(make, pair):
    compiled_only(make)
    relay, _, member = attached(make, track=False, member_sock=pair[0])
    pair[1].close()  # the peer is gone: EPIPE
    read(relay.client_leg, b"first")
    assert relay.member_leg.fd == -1 and bytes(member.written) == b"first"
    read(relay.client_leg, b"second")
    assert bytes(member.written) == b"firstsecond"


def test_a_held_view_of_the_read_buffer_gets_it_replaced(make):
    """Should anything keep a view of the read buffer (no transport is given one), the next
    read goes to a fresh buffer and the held one is left alone."""
    compiled_only(make)
    relay, _, member = attached(make, track=False)
    leg = relay.client_leg
    held = memoryview(leg.get_buffer(-1))
    held[:4] = b"keep"
    assert leg.get_buffer(-1) is not held.obj
    read(leg, b"next read")
    assert bytes(held[:4]) == b"keep" and bytes(member.written) == b"next read"
    fresh = leg.get_buffer(-1)
    held.release()
    assert leg.get_buffer(-1) is fresh  # no view held on the current one: kept
