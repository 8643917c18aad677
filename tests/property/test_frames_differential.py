"""Differential tests: the compiled frame codec must match the pure one, byte for byte.

Hypothesis builds streams of frames, valid and corrupted (reserved opcodes, stray RSV bits, the
wrong mask bit, bad close payloads, huge lengths, random bytes), cuts them at random points and
feeds both trackers and both readers. After every chunk their state, errors and frames (fields
and wire bytes, also those completed before an error) must be equal, and the readers must agree
with the trackers. The builders must give the same frames (compared unmasked) or the same errors.
The trackers with message limits (max_message_size, validate_utf8) are compared on streams of
text messages cut inside characters and sometimes corrupted. MessageAssembler has its own
file (test_message_differential.py).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_frame
from wsproxy.protocol.mask import apply_mask

if _speedups.NO_EXTENSIONS:
    pytest.skip("WSPROXY_NO_EXTENSIONS=1: pure build only", allow_module_level=True)
try:
    from wsproxy._ext import frames as c_frames
except ImportError as exc:  # pragma: no cover - depends on the build
    reason = f"C extensions not built ({exc}); run: python setup.py build_ext --inplace"
    pytest.skip(reason, allow_module_level=True)

BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535]  # mixed in rarely
GOOD_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4000, 4999]


@st.composite
def close_payloads(draw) -> bytes:
    """Mostly well-formed Close payloads, with bad codes, bad UTF-8 and odd lengths mixed in."""
    kinds = ["empty", "code", "code+text", "code+text", "code+bytes", "bad code", "random"]
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=125))
    pool = BAD_CLOSE_CODES if kind == "bad code" else GOOD_CLOSE_CODES
    code = draw(st.sampled_from(pool)).to_bytes(2, "big")
    if kind in ("code", "bad code"):
        return code
    if kind == "code+text":
        return code + draw(st.text(max_size=30)).encode()[:123]
    return code + draw(st.binary(max_size=123))


payloads = st.binary(max_size=40) | st.binary(min_size=120, max_size=300)


@st.composite
def control_frame(draw, masked: bool) -> bytes:
    opcode = draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE]))
    payload = draw(close_payloads()) if opcode == OP_CLOSE else draw(st.binary(max_size=125))
    return build_frame(opcode, payload, mask=masked)


@st.composite
def message(draw, masked: bool, rsv_allowed: int) -> bytes:
    """A valid data message in 1-3 fragments, control frames possibly in between."""
    count = draw(st.integers(1, 3))
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    rsv = draw(st.sampled_from([0, rsv_allowed & 0x40]))  # permessage-deflate: first frame only
    out = []
    for i in range(count):
        if i and draw(st.integers(0, 3)) == 0:
            out.append(draw(control_frame(masked)))
        first, last = i == 0, i == count - 1
        frame_opcode, frame_rsv = (opcode, rsv) if first else (OP_CONT, 0)
        out.append(build_frame(frame_opcode, draw(payloads), fin=last, mask=masked, rsv=frame_rsv))
    return b"".join(out)


@st.composite
def any_frame(draw) -> bytes:
    """One frame from build_frame with anything goes: opcode, FIN, RSV and mask."""
    opcode = draw(st.integers(0, 15))
    payload = draw(close_payloads()) if opcode == OP_CLOSE else draw(payloads)
    rsv = draw(st.sampled_from([0, 0x40, 0x20, 0x10, 0x70]))
    return build_frame(opcode, payload, fin=draw(st.booleans()), mask=draw(st.booleans()), rsv=rsv)


@st.composite
def raw_header(draw) -> bytes:
    """A header with an arbitrary (often huge) length, and no payload."""
    first = draw(st.sampled_from([0x81, 0x82, 0x02, 0x89, 0x88]) | st.integers(0, 255))
    mask_bit = draw(st.sampled_from([0, 0x80]))
    length = draw(st.sampled_from([126, 65535, 65536, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]))
    if length < 1 << 16:
        head = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + length.to_bytes(8, "big")
    return head + (b"\x01\x02\x03\x04" if mask_bit else b"")


@st.composite
def streams(draw) -> tuple[tuple[bool, int, int], bytes, list[int]]:
    """(tracker config, stream, cut points): mostly valid traffic in the tracker's direction."""
    masked = draw(st.booleans())
    rsv_allowed = draw(st.sampled_from([0, 0x40, 0x70]))
    max_frame_size = draw(st.sampled_from([0, 0, 0, 125, 200, 1 << 16]))
    good = message(masked, rsv_allowed)
    piece = st.one_of(
        good, good, good, good, good, good,
        control_frame(masked), control_frame(masked),
        any_frame(),  # often a violation
        raw_header(),  # a huge length, maybe over max_frame_size or with the top bit
        st.binary(min_size=1, max_size=12),  # garbage
    )  # fmt: skip
    data = b"".join(draw(st.lists(piece, max_size=12)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    return (masked, rsv_allowed, max_frame_size), data, cuts


def outcome(tracker, chunk: bytes) -> tuple:
    """Feed one chunk; return the error (if any) and every public attribute."""
    try:
        tracker.feed(chunk)
        error = None
    except FrameError as exc:
        error = (exc.close_code, exc.reason)
    return (error, tracker.frames, tracker.messages, tracker.close_code, tracker.at_boundary,
            tracker.bytes_in, tracker.frame_start)


@settings(max_examples=600, deadline=None)
@given(stream=streams())
def test_c_tracker_matches_python_tracker(stream):
    (masked, rsv_allowed, max_frame_size), data, cuts = stream
    c_tracker = c_frames.FrameTracker(masked, rsv_allowed, max_frame_size)
    py_tracker = py_frames.FrameTracker(masked, rsv_allowed, max_frame_size)
    py_reader = py_frames.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)
    c_reader = c_frames.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)

    bounds = [0, *cuts, len(data)]
    for start, end in zip(bounds, bounds[1:]):
        chunk = data[start:end]
        c_result = outcome(c_tracker, chunk)
        assert c_result == outcome(py_tracker, chunk)
        assert c_result == outcome(py_reader, chunk)
        assert c_result == outcome(c_reader, chunk)

    # A dead tracker keeps raising the same error in both implementations.
    assert outcome(c_tracker, b"\x81\x00") == outcome(py_tracker, b"\x81\x00")


@settings(max_examples=300, deadline=None)
@given(stream=streams(), data=st.data())
def test_byte_at_a_time_equals_whole(stream, data):
    # The chunking never changes the result, for either implementation.
    config, stream, _ = stream
    split = data.draw(st.integers(0, len(stream)))
    for module in (c_frames, py_frames):
        whole = module.FrameTracker(*config)
        bytewise = module.FrameTracker(*config)
        split_twice = module.FrameTracker(*config)
        expected = outcome(whole, stream)
        results = [outcome(bytewise, stream[i : i + 1]) for i in range(len(stream))]
        first_error = next((r for r in results if r[0] is not None), None)
        last = results[-1] if results else outcome(bytewise, b"")
        assert (first_error or last)[0] == expected[0]
        assert last[1:] == expected[1:]
        outcome(split_twice, stream[:split])
        assert outcome(split_twice, stream[split:])[1:] == expected[1:]


# ---- FrameTracker's message limits (max_message_size, validate_utf8) -----------------------------


@st.composite
def text_message(draw, masked: bool, rsv_allowed: int) -> bytes:
    """A text message cut into 1-4 fragments at any byte (inside characters too), sometimes
    with a byte corrupted, sometimes compressed (RSV1: not checked), pings between."""
    text = draw(st.text(max_size=60)).encode()
    if text and draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + bytes([draw(st.integers(0x80, 0xFF))]) + text[at + 1:]
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    rsv = draw(st.sampled_from([0, 0, rsv_allowed & 0x40]))
    out = []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            out.append(build_frame(OP_PING, draw(st.binary(max_size=10)), mask=masked))
        first, last = i == 0, i == len(pieces) - 1
        out.append(build_frame(OP_TEXT if first else OP_CONT, piece, fin=last, mask=masked,
                               rsv=rsv if first else 0))
    return b"".join(out)


@st.composite
def limited_streams(draw, whole_frames: bool = False) -> tuple[tuple, bytes, list[int]]:
    """(tracker config with limits, stream, cut points); ``whole_frames``: no truncated frame
    (no huge header without its payload, no garbage)."""
    (masked, rsv_allowed, max_frame_size), _, _ = draw(streams())
    max_message_size = draw(st.sampled_from([0, 1, 40, 100, 300, 1 << 16]))
    validate_utf8 = draw(st.booleans())
    texts = text_message(masked, rsv_allowed)
    pieces = [texts, texts, texts, message(masked, rsv_allowed), message(masked, rsv_allowed),
              control_frame(masked), any_frame()]
    if not whole_frames:
        pieces.append(raw_header())
    data = b"".join(draw(st.lists(st.one_of(*pieces), max_size=10)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    return (masked, rsv_allowed, max_frame_size, max_message_size, validate_utf8), data, cuts


@settings(max_examples=600, deadline=None)
@given(stream=limited_streams())
def test_c_tracker_with_limits_matches_python_tracker(stream):
    config, data, cuts = stream
    c_tracker = c_frames.FrameTracker(*config)
    py_tracker = py_frames.FrameTracker(*config)
    bounds = [0, *cuts, len(data)]
    for start, end in zip(bounds, bounds[1:]):
        chunk = data[start:end]
        assert outcome(c_tracker, chunk) == outcome(py_tracker, chunk)
    assert outcome(c_tracker, b"\x81\x00") == outcome(py_tracker, b"\x81\x00")


def _first_error(feed) -> int | None:
    try:
        feed()
    except FrameError as exc:
        return exc.close_code
    return None


@settings(max_examples=300, deadline=None)
@given(stream=limited_streams(whole_frames=True), module=st.sampled_from([c_frames, py_frames]))
def test_limits_agree_with_reader_and_assembler(stream, module):
    """Track mode refuses what inspect mode (FrameReader, then MessageAssembler) refuses, with
    the same first code, on streams of whole frames (the tracker may refuse a frame before it
    is whole, the assembler only once it is)."""
    (masked, rsv_allowed, max_frame_size, max_message_size, _), data, _ = stream
    tracker = module.FrameTracker(masked, rsv_allowed, max_frame_size, max_message_size, True)
    reader = module.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)
    assembler = module.MessageAssembler(max_size=max_message_size, validate_utf8=True)

    def inspect():
        try:
            frames = reader.feed(data)
        except FrameError:
            assembler.feed(reader.completed)  # the frames before the reader's violation come first
            raise
        assembler.feed(frames)

    assert _first_error(lambda: tracker.feed(data)) == _first_error(inspect)


# ---- FrameReader ---------------------------------------------------------------------------------


def frame_fields(frame) -> tuple:
    return frame.fin, frame.opcode, frame.payload, frame.rsv, frame.raw


def read_outcome(reader, chunk) -> tuple:
    """Feed one chunk to a reader; return the frames (or those before the error) and its state."""
    try:
        frames, error = reader.feed(chunk), None
    except FrameError as exc:
        frames, error = reader.completed, (exc.close_code, exc.reason)
    return ([frame_fields(f) for f in frames], error, reader.frames, reader.messages, reader.close_code,
            reader.at_boundary, reader.bytes_in, reader.frame_start)


@settings(max_examples=500, deadline=None)
@given(stream=streams(), either_mask=st.booleans(), data=st.data())
def test_c_reader_matches_python_reader(stream, either_mask, data):
    (masked, rsv_allowed, max_frame_size), wire, cuts = stream
    masked = None if either_mask else masked
    c_reader = c_frames.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)
    py_reader = py_frames.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)
    buffer_type = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
    bounds = [0, *cuts, len(wire)]
    read = []
    for start, end in zip(bounds, bounds[1:]):
        chunk = buffer_type(wire[start:end])
        c_result = read_outcome(c_reader, chunk)
        assert c_result == read_outcome(py_reader, chunk)
        read += c_result[0]
    # The frames' wire bytes are the stream, up to where the frame being read (or the bad one) began.
    assert b"".join(fields[4] for fields in read) == wire[: c_reader.frame_start]
    assert read_outcome(c_reader, b"\x81\x00") == read_outcome(py_reader, b"\x81\x00")


# ---- builders ------------------------------------------------------------------------------------


def unmasked(frame: bytes) -> bytes:
    """A masked frame as if built unmasked: mask bit cleared, key dropped, payload unmasked."""
    head_len = {126: 4, 127: 10}.get(frame[1] & 0x7F, 2)
    key = frame[head_len : head_len + 4]
    return bytes([frame[0], frame[1] & 0x7F]) + frame[2:head_len] + apply_mask(frame[head_len + 4 :], key)


def build_outcome(build, *args, mask, **kwargs):
    try:
        frame = build(*args, mask=mask, **kwargs)
    except (ValueError, OverflowError, TypeError) as exc:
        return type(exc), str(exc)
    if mask:
        assert frame[1] & 0x80
        return unmasked(frame)
    return frame


@settings(max_examples=400, deadline=None)
@given(
    opcode=st.integers(-2, 17),
    payload=st.binary(max_size=300) | st.builds(
        lambda size, seed: random.Random(seed).randbytes(size),  # large ones, quickly
        st.sampled_from([65535, 65536, 65537, 100_000]),
        st.integers(0, 9),
    ),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0x10, 0x20, 0x40, 0x70, 0x80, 0x01, -1]),
    mask=st.booleans(),
)
def test_c_build_frame_matches_python(opcode, payload, fin, rsv, mask):
    expected = build_outcome(py_frames.build_frame, opcode, payload, fin=fin, rsv=rsv, mask=mask)
    assert build_outcome(c_frames.build_frame, opcode, payload, fin=fin, rsv=rsv, mask=mask) == expected


@settings(max_examples=400, deadline=None)
@given(
    code=st.sampled_from([1000, 1005, 4999, 0, 65535, 65536, -1]) | st.integers(0, 70000),
    reason=st.text(max_size=130),
    mask=st.booleans(),
)
def test_c_build_close_matches_python(code, reason, mask):
    expected = build_outcome(py_frames.build_close, code, reason, mask=mask)
    assert build_outcome(c_frames.build_close, code, reason, mask=mask) == expected
