"""FrameReader and Frame, pure and compiled, against the shared vectors, whole and byte by byte.

Each frame read is checked against the stream itself: its ``raw`` must be the next bytes of the
stream, and its fields and payload what an independent parse of those bytes gives.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, build_close, build_frame
from wsproxy.protocol.mask import apply_mask

VECTOR_DIR = Path(__file__).parents[1] / "vectors"
VALID = json.loads((VECTOR_DIR / "frames_valid.json").read_text())["vectors"]
INVALID = json.loads((VECTOR_DIR / "frames_invalid.json").read_text())["vectors"]
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
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(f"{how}:{len(data)}")
    chunks: list[bytes | bytearray | memoryview] = []
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, 5, 13, rng.randint(1, 3000)])
        chunks.append(rng.choice([bytes, bytearray, memoryview])(data[pos : pos + size]))
        pos += size
    return chunks


def read_all(reader, chunks) -> tuple[list, FrameError | None]:
    """Feed every chunk; return the frames read, including those before a violation."""
    frames: list = []
    for chunk in chunks:
        try:
            frames += reader.feed(chunk)
        except FrameError as exc:
            return frames + reader.completed, exc
    return frames, None


def parse_one(raw: bytes) -> tuple[bool, int, int, bytes]:
    """(fin, opcode, rsv, unmasked payload) of one complete frame: the test's own parser."""
    length, pos = raw[1] & 0x7F, 2
    if length >= 126:
        size = 2 if length == 126 else 8
        length, pos = int.from_bytes(raw[2 : 2 + size], "big"), 2 + size
    payload = raw[pos + 4 :] if raw[1] & 0x80 else raw[pos:]
    assert len(payload) == length
    if raw[1] & 0x80:
        payload = apply_mask(payload, raw[pos : pos + 4])
    return raw[0] >= 0x80, raw[0] & 0x0F, raw[0] & 0x70, payload


def check_frames_match_stream(frames, data: bytes) -> int:
    """Each frame's raw is the next piece of the stream and parses to the frame's fields."""
    pos = 0
    for frame in frames:
        assert data[pos : pos + len(frame.raw)] == frame.raw
        pos += len(frame.raw)
        assert (frame.fin, frame.opcode, frame.rsv, frame.payload) == parse_one(frame.raw)
        assert type(frame.payload) is bytes and type(frame.raw) is bytes
    return pos


def new_reader(twin, vector):
    return twin.FrameReader(vector["masked"], vector["max_frame_size"], rsv_allowed=vector["rsv_allowed"])


# ---- shared vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector(twin, vector, how):
    data = stream_of(vector)
    reader = new_reader(twin, vector)
    frames, error = read_all(reader, chunked(data, how))
    assert error is None
    assert len(frames) == reader.frames == vector["frames"]
    assert reader.messages == vector["messages"]
    assert reader.close_code == vector["close_code"]
    assert reader.at_boundary == vector["at_boundary"]
    assert reader.bytes_in == len(data)
    consumed = check_frames_match_stream(frames, data)
    assert consumed == reader.frame_start
    assert (consumed == len(data)) == vector["at_boundary"]


@pytest.mark.parametrize("how", CHUNKINGS)
@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector(twin, vector, how):
    data = stream_of(vector)
    reader = new_reader(twin, vector)
    frames, error = read_all(reader, chunked(data, how))
    assert error is not None
    assert error.close_code == vector["code"]
    assert vector["reason"] in error.reason
    assert len(frames) == reader.frames == vector["frames"]
    assert not reader.at_boundary
    # The frames before the violation are whole and end where the bad frame began.
    assert check_frames_match_stream(frames, data) == reader.frame_start

    # The reader is dead: every later feed raises the same error and returns nothing.
    for more in (b"", b"\x81\x00"):
        with pytest.raises(FrameError) as again:
            reader.feed(more)
        assert (again.value.close_code, again.value.reason) == (error.close_code, error.reason)
        assert reader.completed == []


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vector_raises_as_soon_as_known(twin, vector):
    # The byte that reveals the violation raises at once (for 1009: the last length byte,
    # before any payload is buffered).
    data = stream_of(vector)
    at = vector["error_at"]
    reader = new_reader(twin, vector)
    reader.feed(data[:at])
    with pytest.raises(FrameError):
        reader.feed(data[at : at + 1])


# ---- raw bytes -----------------------------------------------------------------------------------


def test_a_frame_fed_alone_is_its_own_raw(twin):
    data = build_frame(OP_TEXT, b"hello", mask=True)
    (frame,) = twin.FrameReader(masked=True).feed(data)
    assert frame.raw is data  # no copy when the chunk is exactly one frame
    (frame,) = twin.FrameReader(masked=True).feed(bytearray(data))
    assert frame.raw == data and type(frame.raw) is bytes


@pytest.mark.parametrize("size", [0, 1, 125, 126, 5000, 65536, 200_000])
@pytest.mark.parametrize("step", [1, 7, 1000, 65536])
def test_frame_across_feeds(twin, size, step):
    if step == 1 and size > 5000:
        pytest.skip("byte at a time over 5000 bytes: slow in pure Python, nothing new")
    payload = random.Random(size).randbytes(size)
    data = build_frame(OP_BINARY, payload, mask=True) + build_frame(OP_PING, b"p", mask=True)
    reader = twin.FrameReader(masked=True, max_size=0)
    frames = []
    for pos in range(0, len(data), step):
        frames += reader.feed(data[pos : pos + step])
    assert [f.payload for f in frames] == [payload, b"p"]
    assert b"".join(f.raw for f in frames) == data


def test_frames_do_not_alias_the_callers_buffer(twin):
    # A BufferedProtocol reuses its bytearray: frames read from it must keep their bytes.
    first = build_frame(OP_TEXT, b"first", mask=False)
    second = build_frame(OP_TEXT, b"second!", mask=False)
    buf = bytearray(first + second[:4])
    reader = twin.FrameReader(masked=False)
    (frame,) = reader.feed(memoryview(buf))
    buf[:] = second[4:] + b"\x00" * 10
    (later,) = reader.feed(memoryview(buf)[: len(second) - 4])
    assert (frame.payload, frame.raw) == (b"first", first)
    assert (later.payload, later.raw) == (b"second!", second)
    buf.extend(b"resizable: no buffer is still exported")


def test_buffer_is_released_after_an_error(twin):
    buf = bytearray(b"\x81\x00\x83\x00")
    with pytest.raises(FrameError):
        twin.FrameReader(False).feed(buf)
    buf.extend(b"more")


# ---- limits and errors ---------------------------------------------------------------------------


def test_max_size_refuses_before_buffering(twin):
    reader = twin.FrameReader(masked=False, max_size=1000)
    with pytest.raises(FrameError) as caught:
        reader.feed(b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")  # the header of a 64 KiB frame only
    assert caught.value.close_code == 1009
    assert caught.value.reason == "frame of 65536 bytes over the 1000 byte limit"


def test_max_size_zero_is_no_limit(twin):
    reader = twin.FrameReader(masked=False, max_size=0)
    reader.feed(b"\x82\x7f" + (1 << 40).to_bytes(8, "big"))
    assert not reader.at_boundary


def test_completed_holds_the_frames_before_a_violation(twin):
    good = build_frame(OP_TEXT, b"a", mask=False) + build_frame(OP_PING, b"", mask=False)
    reader = twin.FrameReader(masked=False)
    assert reader.feed(good) == reader.completed
    with pytest.raises(FrameError):
        reader.feed(good + b"\x83\x00" + good)
    assert [(f.opcode, f.raw) for f in reader.completed] == [(OP_TEXT, good[:3]), (OP_PING, good[3:])]
    assert reader.frame_start == 2 * len(good)


def test_either_mask_when_masked_is_none(twin):
    stream = build_frame(OP_TEXT, b"a", mask=True) + build_frame(OP_BINARY, b"b", mask=False)
    assert [f.payload for f in twin.FrameReader().feed(stream)] == [b"a", b"b"]
    with pytest.raises(FrameError, match="frame masked"):
        twin.FrameReader(masked=False).feed(stream)
    with pytest.raises(FrameError, match="frame not masked"):
        twin.FrameReader(masked=True).feed(stream[7:])


def test_close_frame_is_checked_and_kept(twin):
    reader = twin.FrameReader(masked=True)
    (frame,) = reader.feed(build_close(4000, "done", mask=True))
    assert (frame.opcode, frame.payload, reader.close_code) == (OP_CLOSE, b"\x0f\xa0done", 4000)
    with pytest.raises(FrameError) as caught:
        reader.feed(build_frame(OP_CLOSE, b"\x03\xe8\xff", mask=True))
    assert caught.value.close_code == 1007
    assert reader.close_code == 4000


@pytest.mark.parametrize("kwargs", [{"rsv_allowed": 0x80}, {"rsv_allowed": 0x41}, {"max_size": -1}])
def test_bad_configuration(twin, kwargs):
    with pytest.raises(ValueError):
        twin.FrameReader(True, **kwargs)


@pytest.mark.parametrize(
    "name", ["frames", "messages", "at_boundary", "close_code", "bytes_in", "frame_start", "completed"]
)
def test_reader_attributes_are_read_only(twin, name):
    with pytest.raises(AttributeError):
        setattr(twin.FrameReader(), name, 1)


# ---- Frame values --------------------------------------------------------------------------------


def test_frame_value_semantics(twin):
    frame = twin.Frame(True, OP_TEXT, b"hi")
    assert (frame.fin, frame.opcode, frame.payload, frame.rsv, frame.raw) == (True, OP_TEXT, b"hi", 0, b"")
    same = twin.Frame(True, OP_TEXT, b"hi", 0, b"\x81\x02hi")
    assert frame == same and hash(frame) == hash(same)  # raw is provenance, not content
    assert frame != twin.Frame(False, OP_TEXT, b"hi") != twin.Frame(True, OP_CONT, b"hi")
    assert frame != twin.Frame(True, OP_TEXT, b"hi", 0x40)
    assert repr(frame) == "Frame(fin=True, opcode=1, payload=b'hi', rsv=0)"
    with pytest.raises(AttributeError):
        frame.payload = b"changed"  # type: ignore[misc]


def test_reader_frames_compare_equal_to_built_ones(twin):
    data = build_frame(OP_TEXT, b"x", fin=False, rsv=0x40, mask=True)
    (frame,) = twin.FrameReader(masked=True, rsv_allowed=0x40).feed(data)
    assert frame == twin.Frame(False, OP_TEXT, b"x", 0x40)


def test_default_max_size_is_64_mib(twin):
    twin.FrameReader().feed(b"\x82\x7f" + (64 * 1024 * 1024).to_bytes(8, "big"))
    with pytest.raises(FrameError):
        twin.FrameReader().feed(b"\x82\x7f" + (64 * 1024 * 1024 + 1).to_bytes(8, "big"))


def test_feed_returns_only_completed_frames(twin):
    reader = twin.FrameReader(masked=False)
    data = build_frame(OP_TEXT, b"hello", mask=False) * 2
    assert reader.feed(data[:9]) == [twin.Frame(True, OP_TEXT, b"hello")]
    assert reader.feed(data[9:]) == [twin.Frame(True, OP_TEXT, b"hello")]
    assert reader.feed(b"") == []
