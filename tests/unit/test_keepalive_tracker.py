"""FrameTracker.feed_to_frame (pure and compiled), the tracker's part of the relay's keep-alive:
tests/vectors/frames_stops.json whole, byte by byte and at random split points, and the same
results as feed() for everything it consumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wsproxy.errors import FrameError
from wsproxy.protocol.frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, build_close, build_frame

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "frames_stops.json").read_text())["vectors"]
VALID = [v for v in VECTORS if "code" not in v]
INVALID = [v for v in VECTORS if "code" in v]
CHUNKINGS = ["whole", "bytewise", "random-1", "random-2", "random-3"]


def stream_of(vector: dict) -> bytes:
    """Join the vector's hex parts; "HEX*N" repeats HEX N times (as in test_frames.py)."""
    out = bytearray()
    for part in vector["stream"]:
        hex_text, _, times = part.partition("*")
        out += bytes.fromhex(hex_text) * int(times or 1)
    return bytes(out)


def chunked(data: bytes, how: str) -> list[bytes]:
    """Whole, one byte at a time, or split at random points (seeded by ``how``)."""
    if how == "whole":
        return [data]
    if how == "bytewise":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(f"{how}:{len(data)}")
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 1, 2, 3, 5, 7, 13, rng.randint(1, 300), rng.randint(1, 5000)])
        out.append(data[pos:pos + size])
        pos += size
    return out


def walk(tracker, chunks, pong_only: bool, stops: list[int]) -> None:
    """Feed ``chunks`` with feed_to_frame; record each stop's stream offset, then pass the
    frame's first byte with feed() (the caller would hold or ping there)."""
    base = 0
    for chunk in chunks:
        chunk = bytes(chunk)
        pos = 0
        while pos < len(chunk):
            n = tracker.feed_to_frame(memoryview(chunk)[pos:], pong_only)
            assert 0 <= n <= len(chunk) - pos
            pos += n
            assert tracker.bytes_in == base + pos
            if pos < len(chunk):
                assert tracker.at_boundary  # it stops only where a frame begins
                stops.append(base + pos)
                tracker.feed(chunk[pos:pos + 1])
                pos += 1
        base += len(chunk)


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_stop_vectors(impl, vector, how):
    data = stream_of(vector)
    tracker = impl.FrameTracker(vector["masked"])
    stops: list[int] = []
    walk(tracker, chunked(data, how), vector["pong_only"], stops)
    assert stops == vector["stops"]
    assert (tracker.frames, tracker.close_code, tracker.at_boundary, tracker.bytes_in) == (
        vector["frames"], vector["close_code"], vector["at_boundary"], len(data))


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_stop_vectors_invalid(impl, vector, how):
    data = stream_of(vector)
    tracker = impl.FrameTracker(vector["masked"])
    stops: list[int] = []
    with pytest.raises(FrameError) as caught:
        walk(tracker, chunked(data, how), vector["pong_only"], stops)
    assert caught.value.close_code == vector["code"] and vector["reason"] in caught.value.reason
    assert stops == vector["stops"] and tracker.frames == vector["frames"]
    with pytest.raises(FrameError):  # dead, as after feed()
        tracker.feed_to_frame(b"\x81\x00")


def test_returns_len_when_nothing_begins_and_accepts_any_buffer(impl):
    frame = build_frame(OP_TEXT, b"abc", mask=False)
    for kind in (bytes, bytearray, memoryview):
        tracker = impl.FrameTracker(False)
        assert tracker.feed_to_frame(kind(frame[:3]), True) == 3
        assert tracker.feed_to_frame(kind(frame[3:]), False) == len(frame) - 3
        assert tracker.at_boundary and tracker.frames == 1
        assert tracker.feed_to_frame(kind(b""), False) == 0


@pytest.mark.parametrize("masked", [True, False])
def test_random_streams_match_feed(impl, masked):
    """On random streams and chunkings, feed_to_frame plus feed() of the first byte at each stop
    ends where feed() alone does, and stops exactly at the Pongs' (or all frames') starts."""
    rng = random.Random(6)
    for round_ in range(40):
        frames, starts, pongs = [], [], []
        offset = 0
        for _ in range(rng.randint(1, 12)):
            kind = rng.choice([OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_PONG])
            size = rng.choice([0, 1, 8, 125]) if kind >= 8 else rng.choice([0, 5, 126, 300, 70000])
            frame = build_frame(kind, rng.randbytes(size), mask=masked)
            starts.append(offset)
            if kind == OP_PONG:
                pongs.append(offset)
            frames.append(frame)
            offset += len(frame)
        data = b"".join(frames)
        pong_only = bool(round_ % 2)
        tracker, reference = impl.FrameTracker(masked), impl.FrameTracker(masked)
        stops: list[int] = []
        walk(tracker, chunked(data, f"random-{round_}"), pong_only, stops)
        reference.feed(data)
        assert stops == (pongs if pong_only else starts)
        assert (tracker.frames, tracker.bytes_in, tracker.at_boundary) == (
            reference.frames, reference.bytes_in, reference.at_boundary)


def test_a_close_is_still_noticed(impl):
    tracker = impl.FrameTracker(True)
    data = build_close(1001, "bye", mask=True) + build_frame(OP_PONG, b"x", mask=True)
    assert tracker.feed_to_frame(data) == len(data) - 7
    assert tracker.close_code == 1001
