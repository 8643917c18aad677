"""MessageAssembler and Message, pure and compiled, against tests/vectors/messages.json.

Each vector's stream goes through a FrameReader and a MessageAssembler of the same twin, fed
whole, one byte at a time and at random points, as the inspect relay would run them: on a
reader's violation, the frames before it are still assembled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_frame

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "messages.json").read_text())
CHUNKINGS = ["whole", "bytewise", "random-1", "random-2"]


def _compiled():
    if _speedups.NO_EXTENSIONS:
        return None, "WSPROXY_NO_EXTENSIONS=1: pure build only"
    try:
        from wsproxy._ext import frames
    except ImportError as exc:
        return None, f"C extensions not built ({exc}); run: python setup.py build_ext --inplace"
    return frames, ""


C_FRAMES, C_SKIP_REASON = _compiled()


@pytest.fixture(params=["py", "c"])
def twin(request):
    """The frames module of one implementation (pure or compiled)."""
    if request.param == "py":
        return py_frames
    if C_FRAMES is None:
        pytest.skip(C_SKIP_REASON)
    return C_FRAMES


def hex_parts(parts: list[str]) -> bytes:
    """Join hex parts; "HEX*N" repeats HEX N times."""
    out = bytearray()
    for part in parts:
        hex_text, _, times = part.partition("*")
        out += bytes.fromhex(hex_text) * int(times or 1)
    return bytes(out)


def chunked(data: bytes, how: str) -> list[bytes]:
    """Split data whole, one byte at a time, or at up to 12 random points."""
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(f"{how}:{len(data)}")
    cuts = sorted(rng.sample(range(1, len(data)), min(max(len(data) - 1, 0), rng.randint(1, 12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def assemble(reader, assembler, chunks) -> tuple[list, tuple[int, str] | None]:
    """Run the reader and the assembler over the chunks; return what came out and the error."""
    out: list = []
    for chunk in chunks:
        try:
            frames, reader_error = reader.feed(chunk), None
        except FrameError as exc:
            frames, reader_error = reader.completed, exc
        try:
            out += assembler.feed(frames)
        except FrameError as exc:
            return out + assembler.completed, (exc.close_code, exc.reason)
        if reader_error is not None:
            return out, (reader_error.close_code, reader_error.reason)
    return out, None


def describe(item) -> dict:
    """An output item in the vectors' terms."""
    if item.opcode >= OP_CLOSE:
        return {"control": item.opcode, "payload": item.payload.hex()}
    return {"message": item.opcode, "payload": item.payload.hex(), "rsv": item.rsv, "frames": item.frames}


def expected(vector: dict) -> list[dict]:
    return [{**item, "payload": hex_parts(item["payload"]).hex()} for item in vector["out"]]


def pipeline(twin, vector):
    reader = twin.FrameReader(vector["masked"], vector["max_frame_size"], rsv_allowed=vector["rsv_allowed"])
    assembler = twin.MessageAssembler(vector["max_message_size"], validate_utf8=vector["validate_utf8"])
    return reader, assembler


# ---- shared vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", VECTORS["valid"], ids=[v["name"] for v in VECTORS["valid"]])
def test_valid_vector(twin, vector, how):
    data = hex_parts(vector["stream"])
    reader, assembler = pipeline(twin, vector)
    out, error = assemble(reader, assembler, chunked(data, how))
    assert error is None
    assert [describe(item) for item in out] == expected(vector)
    assert assembler.messages == sum("message" in item for item in vector["out"])
    assert not assembler.in_message
    # Every frame's wire bytes are in exactly one item, and an item's raw reads back as its own
    # frames: forwarding each item's raw resends the stream (a control frame may move ahead of
    # the message it interrupted).
    assert sum(len(item.raw) for item in out) == len(data)
    for item in out:
        again = twin.FrameReader(vector["masked"], 0, rsv_allowed=vector["rsv_allowed"]).feed(item.raw)
        assert len(again) == getattr(item, "frames", 1)
        assert b"".join(frame.payload for frame in again) == item.payload
    if not any(item.opcode >= OP_CLOSE for item in out):
        assert b"".join(item.raw for item in out) == data


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=[v["name"] for v in VECTORS["invalid"]])
def test_invalid_vector(twin, vector, how):
    reader, assembler = pipeline(twin, vector)
    out, error = assemble(reader, assembler, chunked(hex_parts(vector["stream"]), how))
    assert error is not None
    code, reason = error
    assert code == vector["code"]
    assert vector["reason"] in reason
    assert [describe(item) for item in out] == expected(vector)


# ---- the assembler on its own --------------------------------------------------------------------


def frames_of(twin, *wire: bytes) -> list:
    return twin.FrameReader().feed(b"".join(wire))


def test_a_one_frame_message_shares_the_frames_bytes(twin):
    (frame,) = frames_of(twin, build_frame(OP_TEXT, b"hi", mask=True))
    (message,) = twin.MessageAssembler().feed([frame])
    assert message.payload is frame.payload and message.raw is frame.raw
    assert (message.opcode, message.rsv, message.frames) == (OP_TEXT, 0, 1)


def test_fragments_and_interleaved_control_frames(twin):
    wire = [
        build_frame(OP_BINARY, b"ab", fin=False, mask=True),
        build_frame(OP_PING, b"1", mask=True),
        build_frame(OP_CONT, b"cd", fin=False, mask=True),
        build_frame(OP_PONG, b"2", mask=True),
        build_frame(OP_CONT, b"ef", mask=True),
    ]
    frames = frames_of(twin, *wire)
    assembler = twin.MessageAssembler()
    assert assembler.feed(frames[:1]) == []
    assert assembler.in_message
    ping, pong = assembler.feed(frames[1:4])
    assert (ping.opcode, pong.opcode) == (OP_PING, OP_PONG) and ping is frames[1]
    (message,) = assembler.feed(frames[4:])
    assert message == twin.Message(OP_BINARY, b"abcdef")
    assert message.raw == wire[0] + wire[2] + wire[4] and message.frames == 3
    assert not assembler.in_message and assembler.messages == 1


def test_compressed_message_is_flagged_not_validated(twin):
    frames = [twin.Frame(False, OP_TEXT, b"\xff", 0x40), twin.Frame(True, OP_CONT, b"\xfe")]
    (message,) = twin.MessageAssembler().feed(frames)
    assert message.rsv & 0x40 and message.payload == b"\xff\xfe"


@pytest.mark.parametrize(
    ("frames", "code", "reason"),
    [
        ([(True, OP_CONT, b"x")], 1002, "continuation frame with no message to continue"),
        ([(False, OP_TEXT, b"x"), (True, OP_BINARY, b"y")], 1002,
         "new data frame inside a fragmented message"),
        ([(True, 3, b"")], 1002, "reserved opcode 3"),
        ([(True, 11, b"")], 1002, "reserved opcode 11"),
        ([(True, OP_BINARY, b"12345")], 1009, "message of at least 5 bytes over the 4 byte limit"),
        ([(False, OP_TEXT, b"12"), (False, OP_CONT, b"345")], 1009,
         "message of at least 5 bytes over the 4 byte limit"),
        ([(False, OP_TEXT, b"\xe2"), (False, OP_CONT, b"\x28")], 1007, "invalid UTF-8 in a text message"),
        ([(False, OP_TEXT, b"\xe2\x82"), (True, OP_CONT, b"")], 1007, "invalid UTF-8 in a text message"),
    ],
)
def test_violations(twin, frames, code, reason):
    assembler = twin.MessageAssembler(max_size=4)
    ping = twin.Frame(True, OP_PING, b"")
    with pytest.raises(FrameError) as caught:
        assembler.feed([ping] + [twin.Frame(*fields) for fields in frames])
    assert (caught.value.close_code, caught.value.reason) == (code, reason)
    assert assembler.completed == [ping]
    # Dead: every later feed raises the same error, even an empty one.
    for more in ([], [ping]):
        with pytest.raises(FrameError) as again:
            assembler.feed(more)
        assert (again.value.close_code, again.value.reason) == (code, reason)
        assert assembler.completed == []


def test_limit_is_checked_before_the_frame_is_buffered(twin):
    assembler = twin.MessageAssembler(max_size=10)
    assert assembler.feed([twin.Frame(False, OP_BINARY, bytes(10))]) == []
    with pytest.raises(FrameError):
        assembler.feed([twin.Frame(False, OP_CONT, b"!")])  # a non-FIN frame: refused at once


def test_max_size_zero_is_no_limit_and_negative_is_refused(twin):
    (message,) = twin.MessageAssembler(0).feed([twin.Frame(True, OP_BINARY, bytes(100_000))])
    assert len(message.payload) == 100_000
    with pytest.raises(ValueError):
        twin.MessageAssembler(-1)


def test_frames_built_by_code_give_a_message_without_raw(twin):
    read = frames_of(twin, build_frame(OP_TEXT, b"a", fin=False, mask=False))
    (message,) = twin.MessageAssembler().feed(read + [twin.Frame(True, OP_CONT, b"b")])
    assert message.payload == b"ab" and message.raw == b"" and message.frames == 2


def test_accepts_the_other_twins_frames(twin):
    # Anything shaped like a Frame is assembled (a plugin may build its own).
    other = py_frames if twin is not py_frames else (C_FRAMES or py_frames)
    frames = [other.Frame(False, OP_TEXT, b"h\xc3", 0, b"r1"), other.Frame(True, OP_CONT, b"\xa9", 0, b"r2")]
    (message,) = twin.MessageAssembler().feed(iter(frames))
    assert (message.payload, message.raw, message.frames) == ("hé".encode(), b"r1r2", 2)


def test_message_value_semantics(twin):
    message = twin.Message(OP_TEXT, b"hi")
    fields = (message.opcode, message.payload, message.rsv, message.raw, message.frames)
    assert fields == (OP_TEXT, b"hi", 0, b"", 1)
    same = twin.Message(OP_TEXT, b"hi", 0, b"\x81\x02hi", 1)
    assert message == same and hash(message) == hash(same)
    assert message != twin.Message(OP_BINARY, b"hi") != twin.Message(OP_BINARY, b"hi", 0x40)
    assert repr(message) == "Message(opcode=1, payload=b'hi', rsv=0)"
    with pytest.raises(AttributeError):
        message.payload = b"changed"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["messages", "in_message", "completed"])
def test_assembler_attributes_are_read_only(twin, name):
    with pytest.raises(AttributeError):
        setattr(twin.MessageAssembler(), name, 1)
