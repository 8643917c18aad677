"""Differential tests: the compiled MessageAssembler must match the pure one.

Hypothesis builds streams of fragmented messages (text split anywhere, even inside a character;
invalid UTF-8; compressed ones), control frames in between and the odd violation, with random
limits, and runs them through FrameReader + MessageAssembler of each twin at random chunkings:
what comes out (messages, control frames, their wire bytes), and the error with what came out
before it, must be equal, and must not depend on the chunking. The assembler alone is fed
random frame sequences too. The fragment-by-fragment UTF-8 check is held to an oracle built on
Python's strict decoder.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy import _speedups
from wsproxy.errors import FrameError
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_frame

if _speedups.NO_EXTENSIONS:
    pytest.skip("WSPROXY_NO_EXTENSIONS=1: pure build only", allow_module_level=True)
try:
    from wsproxy._ext import frames as c_frames
except ImportError as exc:  # pragma: no cover - depends on the build
    reason = f"C extensions not built ({exc}); run: python setup.py build_ext --inplace"
    pytest.skip(reason, allow_module_level=True)

TWINS = (py_frames, c_frames)


@st.composite
def message_content(draw) -> bytes:
    """Mostly valid UTF-8 text; sometimes random bytes or text with a bad byte spliced in."""
    kind = draw(st.sampled_from(["text", "text", "text", "bytes", "spliced"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    text = draw(st.text(max_size=30)).encode()
    if kind == "spliced":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc0", b"\xed\xa0", b"\xf4\x90", b"\x80"]))
        text = text[:at] + bad + text[at:]
    return text


def split(draw, content: bytes, most: int = 4) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=most - 1)))
    bounds = [0, *cuts, len(content)]
    return [content[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def control_frame(draw, masked: bool) -> bytes:
    opcode = draw(st.sampled_from([OP_PING, OP_PING, OP_PONG, OP_CLOSE]))
    payload = b"\x03\xe8" if opcode == OP_CLOSE else draw(st.binary(max_size=10))
    return build_frame(opcode, payload, mask=masked)


@st.composite
def message(draw, masked: bool, rsv_allowed: int) -> bytes:
    """One data message in 1-4 fragments, control frames possibly in between."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_TEXT, OP_BINARY]))
    rsv = draw(st.sampled_from([0, 0, rsv_allowed & 0x40]))  # compressed: never UTF-8-checked
    fragments = split(draw, draw(message_content()))
    out = []
    for i, fragment in enumerate(fragments):
        if i and draw(st.integers(0, 3)) == 0:
            out.append(draw(control_frame(masked)))
        first, last = i == 0, i == len(fragments) - 1
        out.append(build_frame(opcode if first else OP_CONT, fragment, fin=last, mask=masked,
                               rsv=rsv if first else 0))
    return b"".join(out)


@st.composite
def pipelines(draw):
    """(reader config, assembler config, stream, cut points)."""
    masked = draw(st.booleans())
    rsv_allowed = draw(st.sampled_from([0, 0x40]))
    max_frame_size = draw(st.sampled_from([0, 0, 0, 8, 30]))
    max_message_size = draw(st.sampled_from([0, 0, 5, 20, 60]))
    validate_utf8 = draw(st.booleans() | st.just(True))
    piece = st.one_of(
        message(masked, rsv_allowed), message(masked, rsv_allowed), message(masked, rsv_allowed),
        control_frame(masked),
        st.just(build_frame(OP_CONT, b"orphan", mask=masked)),  # a violation (1002)
    )  # fmt: skip
    stream = b"".join(draw(st.lists(piece, max_size=8)))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=10))))
    return (masked, max_frame_size, rsv_allowed), (max_message_size, validate_utf8), stream, cuts


def item_fields(item) -> tuple:
    """Everything an output item says, the wire bytes included."""
    if type(item).__name__ == "Message":
        return "message", item.opcode, item.payload, item.rsv, item.raw, item.frames
    return "frame", item.fin, item.opcode, item.payload, item.rsv, item.raw


def run(module, reader_config, assembler_config, chunks) -> tuple[list[list[tuple]], tuple | None]:
    """What came out after each chunk, and the first error (reader's or assembler's)."""
    masked, max_frame_size, rsv_allowed = reader_config
    reader = module.FrameReader(masked, max_frame_size, rsv_allowed=rsv_allowed)
    assembler = module.MessageAssembler(*assembler_config)
    outputs: list[list[tuple]] = []
    for chunk in chunks:
        try:
            frames, error = reader.feed(chunk), None
        except FrameError as exc:
            frames, error = reader.completed, (exc.close_code, exc.reason)
        try:
            items = assembler.feed(frames)
        except FrameError as exc:
            items, error = assembler.completed, (exc.close_code, exc.reason)
        outputs.append([item_fields(item) for item in items])
        if error is not None:
            return outputs, error
    return outputs, None


def chunks_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=500, deadline=None)
@given(case=pipelines())
def test_c_pipeline_matches_python(case):
    reader_config, assembler_config, stream, cuts = case
    chunks = chunks_at(stream, cuts)
    assert run(c_frames, reader_config, assembler_config, chunks) == run(
        py_frames, reader_config, assembler_config, chunks
    )


@settings(max_examples=200, deadline=None)
@given(case=pipelines())
def test_chunking_does_not_change_what_comes_out(case):
    reader_config, assembler_config, stream, cuts = case
    for module in TWINS:
        whole, whole_error = run(module, reader_config, assembler_config, [stream])
        bytewise_chunks = chunks_at(stream, list(range(1, len(stream))))
        bytewise, bytewise_error = run(module, reader_config, assembler_config, bytewise_chunks)
        cut, cut_error = run(module, reader_config, assembler_config, chunks_at(stream, cuts))
        flat = [item for items in whole for item in items]
        assert [item for items in bytewise for item in items] == flat
        assert [item for items in cut for item in items] == flat
        assert bytewise_error == cut_error == whole_error


# ---- the assembler on its own, with any frames ---------------------------------------------------

frame_fields = st.tuples(
    st.booleans(),  # fin
    st.sampled_from([OP_CONT, OP_CONT, OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE, 3, 11]),
    st.binary(max_size=6) | st.sampled_from([b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"ok"]),
    st.sampled_from([0, 0, 0x40]),
    st.sampled_from([b"", b"raw"]),
)


@settings(max_examples=500, deadline=None)
@given(
    frames=st.lists(frame_fields, max_size=14),
    batches=st.lists(st.integers(0, 14), max_size=4),
    max_size=st.sampled_from([0, 4, 10]),
    validate_utf8=st.booleans(),
)
def test_c_assembler_matches_python_on_any_frames(frames, batches, max_size, validate_utf8):
    assemblers = [module.MessageAssembler(max_size, validate_utf8) for module in TWINS]
    bounds = [0, *sorted(batches), len(frames)]
    for a, b in zip(bounds, bounds[1:]):
        results = []
        for module, assembler in zip(TWINS, assemblers):
            batch = [module.Frame(*fields) for fields in frames[a:b]]
            try:
                items, error = assembler.feed(batch), None
            except FrameError as exc:
                items, error = assembler.completed, (exc.close_code, exc.reason)
            state = (assembler.messages, assembler.in_message)
            results.append(([item_fields(item) for item in items], error, state))
        assert results[0] == results[1]


# ---- UTF-8 fragment by fragment, against an oracle --------------------------------------------


# Up to 3 continuation bytes: validity depends only on which of 80-8F, 90-9F and A0-BF each
# one is in, so one byte of each range stands for all.
COMPLETIONS = [bytes(p) for n in range(4) for p in itertools.product((0x80, 0x90, 0xA0), repeat=n)]


def can_begin_utf8(data: bytes) -> bool:
    """The oracle: some continuation bytes make ``data`` valid UTF-8."""
    for completion in COMPLETIONS:
        try:
            (data + completion).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(data=st.data(), content=message_content())
def test_text_fails_on_the_fragment_that_breaks_it(data, content):
    fragments = split(data.draw, content, most=6)
    try:
        content.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    # The first fragment after which the text so far can no longer be valid; the last one if
    # the text only ends inside a character.
    expected_failure = None
    for i in range(len(fragments)):
        if not can_begin_utf8(b"".join(fragments[: i + 1])):
            expected_failure = i
            break
    if expected_failure is None and not valid:
        expected_failure = len(fragments) - 1
    for module in TWINS:
        assembler = module.MessageAssembler(0, validate_utf8=True)
        failed_at = None
        for i, fragment in enumerate(fragments):
            frame = module.Frame(i == len(fragments) - 1, OP_TEXT if i == 0 else OP_CONT, fragment)
            try:
                out = assembler.feed([frame])
            except FrameError as exc:
                assert exc.close_code == 1007
                failed_at = i
                break
        assert failed_at == expected_failure, module.__name__
        if valid:
            assert [message.payload for message in out] == [content]
