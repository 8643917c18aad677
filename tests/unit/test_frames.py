"""FrameTracker (pure and compiled) against the shared vectors, and the Close code rules.

FrameReader, MessageAssembler and the builders have their own files (test_frame_reader.py,
test_message_assembler.py, test_frame_builders.py), also run against both twins.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wsproxy.errors import FrameError
from wsproxy.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    build_close,
    build_frame,
    parse_close_payload,
    valid_close_code,
)

VECTOR_DIR = Path(__file__).parents[1] / "vectors"


def load(name: str) -> list[dict]:
    return json.loads((VECTOR_DIR / name).read_text())["vectors"]


def stream_of(vector: dict) -> bytes:
    """Join the vector's hex parts; "HEX*N" repeats HEX N times."""
    out = bytearray()
    for part in vector["stream"]:
        hex_text, _, times = part.partition("*")
        out += bytes.fromhex(hex_text) * int(times or 1)
    return bytes(out)


def chunked(data: bytes, how: str) -> list[bytes | bytearray | memoryview]:
    """Split data the way a socket might: whole, one byte at a time, or at random points."""
    if how == "whole":
        return [data]
    if how == "bytewise":
        view = memoryview(data)
        return [view[i : i + 1] for i in range(len(data))]
    rng = random.Random(f"{how}:{len(data)}")
    chunks: list[bytes | bytearray | memoryview] = []
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 1, 2, 3, 5, 7, 13, rng.randint(1, 300)])
        piece = data[pos : pos + size]
        chunks.append(rng.choice([bytes, bytearray, memoryview])(piece))
        pos += size
    return chunks


CHUNKINGS = ["whole", "bytewise", "random-1", "random-2", "random-3"]
VALID = load("frames_valid.json")
INVALID = load("frames_invalid.json")


def new_tracker(impl, vector):
    return impl.FrameTracker(vector["masked"], vector["rsv_allowed"], vector["max_frame_size"])


def state(tracker) -> tuple:
    return tracker.frames, tracker.messages, tracker.close_code, tracker.at_boundary, tracker.bytes_in


# ---- shared vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector(impl, vector, how):
    data = stream_of(vector)
    tracker = new_tracker(impl, vector)
    for chunk in chunked(data, how):
        tracker.feed(chunk)
    expected = (vector["frames"], vector["messages"], vector["close_code"], vector["at_boundary"], len(data))
    assert state(tracker) == expected


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector(impl, vector, how):
    data = stream_of(vector)
    tracker = new_tracker(impl, vector)
    with pytest.raises(FrameError) as caught:
        for chunk in chunked(data, how):
            tracker.feed(chunk)
    error = caught.value
    assert error.close_code == vector["code"]
    assert vector["reason"] in error.reason
    assert tracker.frames == vector["frames"]
    assert not tracker.at_boundary

    # The tracker is dead: every later feed raises the same error, even an empty one.
    for more in (b"", b"\x81\x00"):
        with pytest.raises(FrameError) as again:
            tracker.feed(more)
        assert (again.value.close_code, again.value.reason) == (error.close_code, error.reason)
    assert tracker.frames == vector["frames"]


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_raises_as_soon_as_known(impl, vector):
    # "error_at" is the byte that reveals the violation (e.g. the last length byte for 1009):
    # everything before it is accepted, and that one byte alone must raise.
    data = stream_of(vector)
    at = vector["error_at"]
    tracker = new_tracker(impl, vector)
    tracker.feed(data[:at])
    with pytest.raises(FrameError):
        tracker.feed(data[at : at + 1])


# ---- FrameTracker API ----------------------------------------------------------------------------


def test_initial_state(impl):
    tracker = impl.FrameTracker(masked=True)
    assert state(tracker) == (0, 0, -1, True, 0)


@pytest.mark.parametrize("name", ["frames", "messages", "at_boundary", "close_code", "bytes_in", "frame_start"])
def test_attributes_are_read_only(impl, name):
    tracker = impl.FrameTracker(False)
    with pytest.raises(AttributeError):
        setattr(tracker, name, 1)


def test_keyword_arguments(impl):
    tracker = impl.FrameTracker(masked=False, rsv_allowed=0x40, max_frame_size=3)
    tracker.feed(b"\xc1\x03abc")
    with pytest.raises(FrameError) as caught:
        tracker.feed(b"\x81\x04")
    assert caught.value.close_code == 1009


@pytest.mark.parametrize("kwargs", [{"rsv_allowed": 0x80}, {"rsv_allowed": 0x41}, {"max_frame_size": -1}])
def test_bad_configuration(impl, kwargs):
    with pytest.raises(ValueError):
        impl.FrameTracker(True, **kwargs)


def test_bytes_in_counts_everything_fed(impl):
    tracker = impl.FrameTracker(False)
    tracker.feed(b"\x81\x02h")
    tracker.feed(bytearray(b"i\x81"))
    assert tracker.bytes_in == 5
    with pytest.raises(FrameError):
        tracker.feed(memoryview(b"\x00\x83\x00"))  # an empty frame, then a reserved opcode
    assert tracker.bytes_in == 8


def test_buffer_is_released_after_an_error(impl):
    # A buffer still exported after feed() would make the relay's bytearray unresizable.
    buf = bytearray(b"\x83\x00")
    view = memoryview(buf)
    with pytest.raises(FrameError):
        impl.FrameTracker(False).feed(view)
    view.release()
    buf.extend(b"more")
    with pytest.raises(FrameError):
        impl.FrameTracker(False).feed(buf)
    buf.extend(b"more")


def test_masked_flag_is_truthiness(impl):
    impl.FrameTracker(1).feed(build_frame(OP_TEXT, b"x", mask=True))
    impl.FrameTracker(0).feed(build_frame(OP_TEXT, b"x", mask=False))


def test_close_payload_split_across_feeds(impl):
    data = build_close(4321, "split reason", mask=True)
    tracker = impl.FrameTracker(True)
    for i in range(len(data)):
        tracker.feed(data[i : i + 1])
        assert tracker.close_code == (4321 if i == len(data) - 1 else -1)


# ---- Close frames built, read and tracked --------------------------------------------------------


CLOSE_CASES = [(1000, ""), (1001, "going away"), (4999, "é€😀"), (3000, "r" * 123)]


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize(("code", "reason"), CLOSE_CASES)
def test_build_close_round_trip(impl, mask, code, reason):
    data = build_close(code, reason, mask=mask)
    (frame,) = FrameReader(masked=mask).feed(data)
    assert frame.opcode == OP_CLOSE and frame.fin
    assert parse_close_payload(frame.payload) == (code, reason)
    tracker = impl.FrameTracker(mask)
    tracker.feed(data)
    assert tracker.close_code == code


# ---- close code rules ----------------------------------------------------------------------------


def test_valid_close_code_table():
    valid = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
    assert {code for code in range(1 << 16) if valid_close_code(code)} == valid


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"", (1005, "")), (b"\x03\xe8", (1000, "")), (b"\x0f\xa0ok", (4000, "ok"))],
)
def test_parse_close_payload(payload, expected):
    assert parse_close_payload(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"), [(b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)]
)
def test_parse_close_payload_errors(payload, code):
    with pytest.raises(FrameError) as caught:
        parse_close_payload(payload)
    assert caught.value.close_code == code


def test_frame_start_marks_where_the_bad_frame_began(impl):
    """A relay forwards the valid frames that precede a violation in the same chunk."""
    good = build_frame(OP_TEXT, b"hello", mask=True) + build_frame(OP_PING, b"", mask=True)
    bad = bytes([0x83, 0x80]) + b"\x00\x00\x00\x00"  # reserved opcode 3
    tracker = impl.FrameTracker(True)
    tracker.feed(b"\x81")  # a partial frame from an earlier read
    assert tracker.frame_start == 0 and not tracker.at_boundary
    tracker = impl.FrameTracker(True)
    with pytest.raises(FrameError) as info:
        tracker.feed(good + bad + good)
    assert info.value.close_code == 1002
    assert tracker.frame_start == len(good)
    assert tracker.frames == 2


def test_frame_start_is_bytes_in_at_a_boundary(impl):
    tracker = impl.FrameTracker(False)
    frame = build_frame(OP_BINARY, b"x" * 300, mask=False)
    for i in range(len(frame)):
        tracker.feed(frame[i : i + 1])
        if i < len(frame) - 1:
            assert tracker.frame_start == 0
    assert tracker.at_boundary and tracker.frame_start == tracker.bytes_in == len(frame)
