"""FrameTracker's message limits (pure and compiled): ``max_message_size`` and ``validate_utf8``,
against tests/vectors/frames_limits.json and a few API checks.

The frame-level vectors (frames_valid.json, frames_invalid.json) are test_frames.py's; the
compiled and pure trackers are also compared on random streams with these limits in
tests/property/test_frames_differential.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wsproxy.errors import FrameError
from wsproxy.protocol.frames import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, build_frame

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "frames_limits.json").read_text())
VALID, INVALID = VECTORS["valid"], VECTORS["invalid"]
CHUNKINGS = ["whole", "bytewise", "random-1", "random-2", "random-3"]


def stream_of(vector: dict) -> bytes:
    """Join the vector's hex parts; "HEX*N" repeats HEX N times (as in test_frames.py)."""
    out = bytearray()
    for part in vector["stream"]:
        hex_text, _, times = part.partition("*")
        out += bytes.fromhex(hex_text) * int(times or 1)
    return bytes(out)


def chunked(data: bytes, how: str) -> list:
    """Whole, one byte at a time, or cut at random points into bytes/bytearray/memoryview."""
    if how == "whole":
        return [data]
    if how == "bytewise":
        view = memoryview(data)
        return [view[i : i + 1] for i in range(len(data))]
    rng = random.Random(f"{how}:{len(data)}")
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 1, 2, 3, 5, 7, 13, rng.randint(1, 300)])
        chunks.append(rng.choice([bytes, bytearray, memoryview])(data[pos : pos + size]))
        pos += size
    return chunks


def state(tracker) -> tuple:
    return tracker.frames, tracker.messages, tracker.close_code, tracker.at_boundary, tracker.bytes_in


def new_tracker(impl, vector):
    return impl.FrameTracker(vector["masked"], vector["rsv_allowed"], vector["max_frame_size"],
                             vector["max_message_size"], vector["validate_utf8"])


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
    assert (error.close_code, vector["reason"] in error.reason) == (vector["code"], True), error.reason
    assert tracker.frames == vector["frames"] and not tracker.at_boundary
    # dead: every later feed raises the same error
    with pytest.raises(FrameError) as again:
        tracker.feed(b"\x81\x00")
    assert (again.value.close_code, again.value.reason) == (error.close_code, error.reason)


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_raises_as_soon_as_known(impl, vector):
    """Everything before ``error_at`` is accepted, and that byte alone raises: a 1009 at the
    frame's length (before any of its payload), a 1007 at the byte that breaks the text."""
    data = stream_of(vector)
    at = vector["error_at"]
    tracker = new_tracker(impl, vector)
    tracker.feed(data[:at])
    with pytest.raises(FrameError) as caught:
        tracker.feed(data[at : at + 1])
    assert caught.value.close_code == vector["code"]


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_frame_start_is_the_refused_frame(impl, vector):
    """The relay forwards what precedes ``frame_start``: never a byte of the refused frame."""
    data = stream_of(vector)
    tracker = new_tracker(impl, vector)
    with pytest.raises(FrameError):
        tracker.feed(data)
    start = tracker.frame_start
    replay = new_tracker(impl, vector)
    replay.feed(data[:start])  # all that came before is valid, and whole frames
    assert replay.at_boundary and replay.frames == vector["frames"]


def test_keyword_arguments_and_defaults(impl):
    tracker = impl.FrameTracker(masked=False, max_message_size=3, validate_utf8=True)
    tracker.feed(build_frame(OP_TEXT, b"ab", fin=False, mask=False))
    with pytest.raises(FrameError) as caught:
        tracker.feed(build_frame(OP_CONT, b"cd", mask=False))
    assert caught.value.close_code == 1009
    # no limits by default: a huge message and invalid text pass
    tracker = impl.FrameTracker(False)
    tracker.feed(b"\x02\x7f" + (1 << 40).to_bytes(8, "big"))
    assert tracker.frames == 0 and not tracker.at_boundary
    impl.FrameTracker(True).feed(build_frame(OP_TEXT, b"\xff", mask=True))


def test_negative_message_size_is_refused(impl):
    with pytest.raises(ValueError):
        impl.FrameTracker(True, 0, 0, -1)


def test_utf8_across_feeds_inside_one_masked_frame(impl):
    """The key stream goes on across feeds: a masked text payload cut at every offset."""
    text = "aé€😀z".encode() * 3
    frame = build_frame(OP_TEXT, text, mask=True)
    for cut in range(len(frame) + 1):
        tracker = impl.FrameTracker(True, validate_utf8=True)
        tracker.feed(frame[:cut])
        tracker.feed(frame[cut:])
        assert tracker.messages == 1 and tracker.at_boundary


def test_long_masked_text_is_checked_in_blocks(impl):
    """More than the compiled twin's unmask block (2 KiB): the bad byte deep inside is found."""
    good = "é".encode() * 5000
    tracker = impl.FrameTracker(True, validate_utf8=True)
    tracker.feed(build_frame(OP_TEXT, good, mask=True))
    bad = good[:7001] + b"\x41" + good[7002:]  # a continuation byte replaced: breaks the character at 7000
    tracker = impl.FrameTracker(True, validate_utf8=True)
    frame = build_frame(OP_TEXT, bad, mask=True)
    with pytest.raises(FrameError) as caught:
        tracker.feed(frame)
    assert caught.value.close_code == 1007
    # and it is the feed holding that byte that raises
    tracker = impl.FrameTracker(True, validate_utf8=True)
    head = len(frame) - len(bad)
    tracker.feed(frame[: head + 7001])
    with pytest.raises(FrameError):
        tracker.feed(frame[head + 7001 :])


def test_message_size_counts_only_data_frames(impl):
    tracker = impl.FrameTracker(False, max_message_size=4)
    for _ in range(3):
        tracker.feed(build_frame(OP_BINARY, b"ab", fin=False, mask=False))
        tracker.feed(build_frame(OP_PING, b"p" * 125, mask=False))
        tracker.feed(build_frame(OP_CONT, b"cd", mask=False))
    assert tracker.messages == 3 and tracker.frames == 9


def test_feed_to_frame_applies_the_limits_too(impl):
    """The keep-alive path (feed_to_frame) runs its own copy of the loop: same checks."""
    good = build_frame(OP_TEXT, "é".encode(), fin=False, mask=True)
    bad = build_frame(OP_CONT, b"\xa9", mask=True)  # a continuation byte with no lead
    tracker = impl.FrameTracker(True, max_message_size=3, validate_utf8=True)
    assert tracker.feed_to_frame(good, False) == 0  # stops before the frame
    assert tracker.feed_to_frame(good, True) == len(good)
    with pytest.raises(FrameError) as caught:
        tracker.feed_to_frame(bad, True)
    assert caught.value.close_code == 1007
    tracker = impl.FrameTracker(True, max_message_size=3)
    tracker.feed_to_frame(good, True)
    with pytest.raises(FrameError) as caught:
        tracker.feed_to_frame(build_frame(OP_CONT, b"xy", mask=True), True)
    assert caught.value.close_code == 1009
