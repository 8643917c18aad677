"""RelayCore's keep-alive path, both twins on the same cases, then against each other:
our Pongs cut out of the streams (whole or split across reads, between fragments), other
Pongs and Pings untouched, an owed Ping let in only at a frame boundary, violations and
Close frames handled as on the plain path."""

from __future__ import annotations

import random

import pytest

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import relay_core as py_relay_core
from wsproxy.protocol.frames import (OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_close,
                                     build_frame)

TOKEN = b"tok-1234"
# The test hook's Pings, with fixed bytes (a zero mask key towards the member) so that runs compare.
MARKER_PING = {"client": b"\x89\x01P", "member": b"\x89\x81\x00\x00\x00\x00P"}
LEG_C, LEG_M = py_relay_core.LEG_CLIENT, py_relay_core.LEG_MEMBER


def implementations():
    yield pytest.param((py_relay_core.RelayCore, py_frames.FrameTracker), id="py")
    try:
        from wsproxy._ext.frames import FrameTracker
        from wsproxy._ext.relay_core import RelayCore
    except ImportError:
        if not _speedups.NO_EXTENSIONS:
            raise
        return
    yield pytest.param((RelayCore, FrameTracker), id="c")


class Endpoint:
    def __init__(self, name: str) -> None:
        self.name = name
        self.written = bytearray()
        self.closed = False
        self.transport = None

    def write(self, data) -> None:
        self.written += data

    def pause_reading(self, reason) -> None:
        pass

    def resume_reading(self, reason) -> None:
        pass


def relay_class(core_class):
    class Relay(core_class):
        """The hooks record; _inject_ping writes a marker Ping, as WsRelay would."""

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

        def _inject_ping(self, side):
            ep = self.client if side == "client" else self.member
            self.calls.append(("ping", side, len(ep.written)))
            ep.write(MARKER_PING[side])

    return Relay


@pytest.fixture(params=list(implementations()))
def make(request):
    core_class, tracker_class = request.param
    Relay = relay_class(core_class)

    def factory(keepalive: bool = True):
        client, member = Endpoint("client"), Endpoint("member")
        relay = Relay(client, member, tracker_class(True), tracker_class(False))
        relay.calls = []
        if keepalive:
            relay.enable_keepalive(TOKEN)
        return relay, client, member

    factory.tracker = tracker_class
    return factory


def up(opcode, payload=b"", fin=True):
    return build_frame(opcode, payload, mask=True, fin=fin)


def down(opcode, payload=b"", fin=True):
    return build_frame(opcode, payload, mask=False, fin=fin)


def pieces(data: bytes, how):
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(how)
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 40)
        out.append(data[pos:pos + step])
        pos += step
    return out


HOW = ["whole", "bytewise", 1, 2, 3]


@pytest.mark.parametrize("how", HOW)
def test_our_pongs_are_cut_out_both_ways(make, how):
    relay, client, member = make()
    kept_up = [up(OP_TEXT, b"hello"), up(OP_TEXT, b"frag", fin=False), up(OP_CONT, b"ment"),
               up(OP_PONG, b"someone else's"), up(OP_PING, TOKEN), up(OP_BINARY, bytes(70000))]
    ours_up = up(OP_PONG, TOKEN)
    # our Pong first, between two fragments, and last
    stream_up = (ours_up + kept_up[0] + kept_up[1] + ours_up + b"".join(kept_up[2:]) + ours_up)
    kept_down = [down(OP_TEXT, b"x" * 200), down(OP_PONG, TOKEN + b"!"), down(OP_PONG, b""),
                 down(OP_PONG, TOKEN[:-1] + b"?"), down(OP_BINARY, b"y", fin=False), down(OP_CONT, b"z")]
    ours_down = down(OP_PONG, TOKEN)
    stream_down = b"".join(kept_down[:4]) + ours_down + kept_down[4] + ours_down + kept_down[5]
    for part in pieces(stream_up, how):
        relay.on_data(client, part)
    for part in pieces(stream_down, how):
        relay.on_data(member, part)
    assert bytes(member.written) == b"".join(kept_up)
    assert bytes(client.written) == b"".join(kept_down)
    assert relay.ka.answered == LEG_C | LEG_M and relay.ka.heard == LEG_C | LEG_M
    assert relay.calls == [] and relay.ka.holding == 0
    assert (relay.c2u.frames, relay.u2c.frames) == (9, 8)  # every frame is tracked, ours too
    assert (relay.bytes_in, relay.bytes_out) == (len(member.written), len(client.written))


def test_nothing_is_absorbed_without_keepalive(make):
    relay, client, member = make(keepalive=False)
    pong = up(OP_PONG, TOKEN)
    relay.on_data(client, pong)
    assert bytes(member.written) == pong and relay.ka is None


def test_answered_marks_only_the_leg_that_answered(make):
    relay, client, member = make()
    relay.on_data(member, down(OP_PONG, TOKEN))
    assert relay.ka.answered == LEG_M and client.written == b""
    relay.on_data(client, up(OP_TEXT, b"a"))
    assert relay.ka.answered == LEG_M and relay.ka.heard == LEG_C | LEG_M


@pytest.mark.parametrize("how", HOW)
def test_an_owed_ping_waits_for_the_first_frame_boundary(make, how):
    """A Ping owed to the member goes in where the client's frame ends, even mid-read, and
    never inside a frame; between the fragments of a message is a boundary too."""
    relay, client, member = make()
    first = up(OP_TEXT, bytes(3000), fin=False)
    rest = up(OP_CONT, b"end") + up(OP_TEXT, b"next")
    relay.on_data(client, first[:100])  # mid-frame
    relay.ka.want = LEG_M
    for part in pieces(first[100:] + rest, how):
        relay.on_data(client, part)
    assert relay.calls == [("ping", "member", len(first))]
    assert bytes(member.written) == first + MARKER_PING["member"] + rest
    tracker = make.tracker(True)
    tracker.feed(bytes(member.written))  # the member sees a valid stream: the Ping between fragments
    assert tracker.frames == 4 and tracker.at_boundary
    assert relay.ka.want == 0


def test_an_owed_ping_goes_before_the_next_read_at_a_boundary(make):
    relay, client, member = make()
    relay.ka.want = LEG_C
    relay.on_data(member, down(OP_TEXT, b"after"))
    assert relay.calls == [("ping", "client", 0)]
    assert client.written.endswith(down(OP_TEXT, b"after"))


def test_an_owed_ping_goes_at_the_end_of_a_read_that_ends_a_frame(make):
    relay, client, member = make()
    frame = down(OP_BINARY, bytes(500))
    relay.on_data(member, frame[:10])
    relay.ka.want = LEG_C
    relay.on_data(member, frame[10:])
    assert relay.calls == [("ping", "client", len(frame))]


def test_an_owed_ping_goes_while_a_pong_is_held(make):
    """A Pong being read is held back, so the stream it travels on is at a boundary: the Ping
    goes first, and the Pong (ours) is absorbed when its last bytes arrive."""
    relay, client, member = make()
    pong, text = up(OP_PONG, TOKEN), up(OP_TEXT, b"a")
    relay.on_data(client, text[:3])
    relay.ka.want = LEG_M
    relay.on_data(client, text[3:] + pong[:5])
    assert relay.ka.holding == LEG_C
    assert relay.calls == [("ping", "member", len(text))]
    relay.on_data(client, pong[5:] + up(OP_TEXT, b"b"))
    assert relay.ka.holding == 0 and relay.ka.answered == LEG_C
    tracker = make.tracker(True)
    tracker.feed(bytes(member.written))
    assert tracker.frames == 3


@pytest.mark.parametrize("split", [1, 2, 4])
def test_a_violation_inside_a_held_pong(make, split):
    """An unmasked Pong from the client: the frames before it still go on, the hook gets the
    held bytes, whose valid prefix is empty (the member's stream is at a boundary)."""
    relay, client, member = make()
    good = up(OP_TEXT, b"ok")
    bad = down(OP_PONG, TOKEN)
    relay.on_data(client, good + bad[:split])
    if split < 2:
        relay.on_data(client, bad[split:])
    assert bytes(member.written) == good
    assert relay.calls == [("client_violation", 1002, bad[:2])]
    data = relay.calls[0][2]
    assert relay.c2u.frame_start - (relay.c2u.bytes_in - len(data)) == 0
    assert relay.ka.holding == 0


def test_a_violation_after_an_absorbed_pong(make):
    relay, client, member = make()
    good = down(OP_TEXT, b"ok")
    bad = up(OP_TEXT, b"masked")  # a server frame must not be masked
    relay.on_data(member, good + down(OP_PONG, TOKEN) + good + bad)
    # The piece after our Pong is what the hook gets: its valid prefix (the second "ok",
    # which WsRelay forwards itself) is measured from the piece's start.
    assert bytes(client.written) == good
    (name, code, data), = relay.calls
    assert (name, code) == ("member_violation", 1002) and data == good + bad
    assert relay.u2c.frame_start - (relay.u2c.bytes_in - len(data)) == len(good)


def test_close_frames_on_the_keepalive_path(make):
    relay, client, member = make()
    close = up(0x8, (1000).to_bytes(2, "big"))
    relay.on_data(client, up(OP_PONG, TOKEN) + close)
    assert relay.client_sent_close and relay.closed_to_member
    assert bytes(member.written) == close and relay.calls == [("first_close", "client", 1000)]
    relay.on_data(client, up(OP_TEXT, b"late"))
    assert bytes(member.written) == close  # nothing after a Close
    relay.on_data(member, build_close(1000, mask=False))
    relay.on_data(client, b"")
    assert ("shut", "client") in relay.calls


def test_ended_leg_gets_nothing_but_pongs_are_still_absorbed(make):
    relay, client, member = make()
    relay.ended = LEG_M
    relay.on_data(client, up(OP_TEXT, b"a") + up(OP_PONG, TOKEN))
    assert member.written == b"" and relay.ka.answered == LEG_C and relay.bytes_in == 0


def test_enable_keepalive_rules(make):
    relay, _, _ = make(keepalive=False)
    ka = relay.enable_keepalive(TOKEN)
    assert relay.ka is ka and relay.enable_keepalive(b"other") is ka and ka.token == TOKEN
    assert (ka.heard, ka.answered, ka.want, ka.holding, ka.interval, ka.deadline_client) == (0, 0, 0, 0, 0.0, 0.0)
    core_class = type(relay).__mro__[1]
    raw = type(relay)(Endpoint("c"), Endpoint("m"))
    with pytest.raises(ValueError):
        raw.enable_keepalive(TOKEN)  # raw mode: no frame boundaries
    for bad in (b"", bytes(126)):
        fresh = type(relay)(Endpoint("c"), Endpoint("m"), make.tracker(True), make.tracker(False))
        with pytest.raises(ValueError):
            fresh.enable_keepalive(bad)
    assert core_class.__name__ == "RelayCore"


def test_keepalive_state_twins_have_the_same_fields():
    try:
        from wsproxy._ext.frames import FrameTracker
        from wsproxy._ext.relay_core import RelayCore
    except ImportError:
        pytest.skip("C extensions not built")
    public = lambda obj: {n for n in dir(obj) if not n.startswith("_")}  # noqa: E731
    c = RelayCore(Endpoint("c"), Endpoint("m"), FrameTracker(True), FrameTracker(False)).enable_keepalive(TOKEN)
    py = py_relay_core.RelayCore(Endpoint("c"), Endpoint("m"), py_frames.FrameTracker(True),
                                 py_frames.FrameTracker(False)).enable_keepalive(TOKEN)
    assert public(c) == public(py) == {"token", "heard", "answered", "want", "holding", "interval", "timeout",
                                       "due_client", "due_member", "deadline_client", "deadline_member"}
    for name in ("heard", "answered", "want"):
        setattr(c, name, 3)
        assert getattr(c, name) == 3
    c.deadline_member = 1.5
    assert c.deadline_member == 1.5


# ----------------------------------------------------------------------------- C == pure


def random_stream(rng: random.Random, masked: bool) -> bytes:
    """Valid frames of one direction: messages (some fragmented), Pings, our Pongs, others'."""
    out = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.3:
            out.append(build_frame(OP_PONG, TOKEN, mask=masked))
        elif kind < 0.45:
            out.append(build_frame(rng.choice([OP_PING, OP_PONG]), rng.choice([b"", TOKEN[:7], b"app"]), mask=masked))
        elif kind < 0.6:  # a fragmented message with control frames between the fragments
            out.append(build_frame(OP_BINARY, rng.randbytes(rng.randint(0, 300)), mask=masked, fin=False))
            for _ in range(rng.randint(0, 2)):
                out.append(build_frame(OP_PONG, TOKEN, mask=masked))
            out.append(build_frame(OP_CONT, rng.randbytes(rng.randint(0, 300)), mask=masked))
        else:
            out.append(build_frame(OP_TEXT, rng.randbytes(rng.choice([0, 3, 125, 126, 2000, 70000])), mask=masked))
    return b"".join(out)


def script(seed: int):
    """Random streams both ways, cut into reads, interleaved, with Pings owed now and then."""
    rng = random.Random(seed)
    up_stream, down_stream = random_stream(rng, True), random_stream(rng, False)
    if seed % 5 == 0:  # end with a violation now and then
        up_stream += build_frame(OP_TEXT, b"unmasked", mask=False)
    up_parts, down_parts = pieces(up_stream, f"u{seed}"), pieces(down_stream, f"d{seed}")
    steps = []
    while up_parts or down_parts:
        want = rng.choice([LEG_C, LEG_M]) if rng.random() < 0.2 else 0
        if up_parts and (not down_parts or rng.random() < 0.5):
            steps.append((want, True, up_parts.pop(0)))
        else:
            steps.append((want, False, down_parts.pop(0)))
    return up_stream, down_stream, steps


def run_script(make_pair, steps):
    """Feed the steps to a new relay; return what it did."""
    relay, client, member = make_pair()
    for want, from_client, data in steps:
        relay.ka.want |= want
        relay.on_data(client if from_client else member, data)
    ka = relay.ka
    return (bytes(client.written), bytes(member.written), relay.calls, ka.heard, ka.answered, ka.want,
            ka.holding, relay.bytes_in, relay.bytes_out, relay.c2u.frames, relay.u2c.frames,
            relay.c2u.bytes_in, relay.u2c.bytes_in)


def test_compiled_and_pure_twins_agree_on_random_streams():
    try:
        from wsproxy._ext.frames import FrameTracker
        from wsproxy._ext.relay_core import RelayCore
    except ImportError:
        pytest.skip("C extensions not built")

    def maker(core, tracker):
        Relay = relay_class(core)

        def make_pair():
            client, member = Endpoint("client"), Endpoint("member")
            relay = Relay(client, member, tracker(True), tracker(False))
            relay.calls = []
            relay.enable_keepalive(TOKEN)
            return relay, client, member
        return make_pair

    for seed in range(60):
        up_stream, down_stream, steps = script(seed)
        c = run_script(maker(RelayCore, FrameTracker), steps)
        py = run_script(maker(py_relay_core.RelayCore, py_frames.FrameTracker), steps)
        assert c == py, f"seed {seed}"
        # What went on is the input minus our Pongs, plus marker Pings at frame boundaries.
        for written, stream, masked in ((c[1], up_stream, True), (c[0], down_stream, False)):
            check = py_frames.FrameReader(masked=masked)
            try:
                got = [f for f in check.feed(written) if f.raw not in MARKER_PING.values()]
            except FrameError:
                pytest.fail(f"seed {seed}: the output is not a valid frame stream")
            sent = py_frames.FrameReader(masked=masked)
            try:
                expected = [f for f in sent.feed(stream) if not (f.opcode == OP_PONG and f.payload == TOKEN)]
            except FrameError:
                # The violation's read: the hook (WsRelay) forwards the frames before the bad one.
                expected = [f for f in sent.completed if not (f.opcode == OP_PONG and f.payload == TOKEN)]
                assert any(call[0] == "client_violation" for call in c[2])
                expected = expected[:len(got)]
            assert got == expected, f"seed {seed}"
