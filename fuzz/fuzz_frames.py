"""Fuzz the WebSocket frame codec, differentially: the C twin against the pure one.

Input: byte 0 holds flags, byte 1 picks ``max_frame_size``, byte 2 the message size limit,
byte 3 the split seed (``harness_support.split_points``); the rest is the byte stream. Flags:
0x01 masked (client to member), 0x06 ``rsv_allowed`` (0, 0x40, 0x70, 0x40), 0x08 a reader that
takes either mask, 0x10 ``validate_utf8``, 0x20 ``feed_to_frame`` stops at every frame, not
only Pongs, 0x40 chunks passed as memoryview, 0x80 as bytearray.

Checked for each input, on both twins (``wsproxy._speedups`` picks the "primary" one, which
is what ``WSPROXY_NO_EXTENSIONS`` changes; the other is imported explicitly):

- ``FrameTracker``: after every chunk, the C and pure trackers have the same error (close code
  and reason) and the same public state; ``feed_to_frame`` (the keep-alive path) stops only at
  frame boundaries (at Pongs with ``pong_only``), and a tracker fed that way ends in the same
  state as one fed plainly;
- ``FrameReader``: the same frames (fin, opcode, payload, rsv, wire bytes) or errors from both,
  the same count and error as the tracker, and the frames' wire bytes are the stream itself;
- ``MessageAssembler``: the same messages and errors from both; fed frame by frame, the primary
  one matches a small independent model (continuation order 1002, size 1009, UTF-8 1007);
- ``build_frame`` / ``build_close`` from the stream's first bytes: both twins build the same
  frame (or raise the same error), and a reader gets the same fields back.

A FrameError is the expected answer to a bad stream; any other exception, or a disagreement,
is a bug. Run: ``python fuzz/fuzz_frames.py -max_total_time=60 fuzz/corpus/frames``.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from harness_support import run_atheris, split_points  # noqa: E402

MASKED, RSV_SHIFT, EITHER_MASK, VALIDATE_UTF8, EVERY_FRAME, AS_VIEW, AS_BYTEARRAY = 1, 1, 8, 16, 32, 64, 128
RSV_CHOICES = (0, 0x40, 0x70, 0x40)
SIZE_CHOICES = (0, 0, 0, 1, 125, 126, 65535, 65536)
OP_CLOSE, OP_PONG = 8, 10


def load() -> None:
    """Import what is checked (under atheris.instrument_imports when fuzzing)."""
    global FrameError, primary, secondary, apply_mask
    from wsproxy import _speedups
    from wsproxy.errors import FrameError
    from wsproxy.protocol import frames as py_frames
    from wsproxy.protocol.mask import apply_mask

    try:
        from wsproxy._ext import frames as c_frames
    except ImportError:
        c_frames = None
    if _speedups.IMPLEMENTATION == "c":
        primary, secondary = c_frames, py_frames
    else:
        primary, secondary = py_frames, c_frames  # None: C not built, no differential


def twins():
    return (primary,) if secondary is None else (primary, secondary)


def size_limit(selector: int) -> int:
    """Mostly the few sizes where limits bite, sometimes a small one (1..15)."""
    return SIZE_CHOICES[selector % 8] if selector < 240 else selector - 239


def frame_fields(frame) -> tuple:
    return frame.fin, frame.opcode, bytes(frame.payload), frame.rsv, bytes(frame.raw)


def state(parser) -> tuple:
    return (parser.frames, parser.messages, parser.close_code, parser.at_boundary, parser.bytes_in,
            parser.frame_start)


# --- tracker --------------------------------------------------------------------------------------


def track(module, config, chunks) -> list[tuple]:
    tracker = module.FrameTracker(*config)
    out = []
    for chunk in chunks:
        try:
            tracker.feed(chunk)
            error = None
        except FrameError as exc:
            error = (exc.close_code, exc.reason)
        out.append((error, *state(tracker)))
    return out


def track_to_frame(module, config, chunks, pong_only: bool) -> tuple:
    """Feed as the keep-alive relay does (relay_core._relay_ka): ``feed_to_frame``; where it
    stops, the next byte goes through ``feed``. Returns (stops, final outcome)."""
    tracker = module.FrameTracker(*config)
    stops, error = [], None
    for chunk in chunks:
        data = bytes(chunk)
        pos = 0
        try:
            while pos < len(data):
                n = tracker.feed_to_frame(chunk[pos:] if pos else chunk, pong_only)
                assert 0 <= n <= len(data) - pos, (n, pos, len(data))
                pos += n
                if pos < len(data):
                    # It stopped before a frame's first byte.
                    assert tracker.at_boundary, (pos, data)
                    assert not pong_only or data[pos] & 0x0F == OP_PONG, (pos, data)
                    stops.append(tracker.bytes_in)
                    tracker.feed(data[pos : pos + 1])
                    pos += 1
        except FrameError as exc:
            error = (exc.close_code, exc.reason)
            break
    return stops, (error, *state(tracker))


# --- reader and assembler -------------------------------------------------------------------------


def read(module, masked, max_size, rsv_allowed, chunks) -> tuple[list, list]:
    """(outcome per chunk, frames read per chunk)."""
    reader = module.FrameReader(masked, max_size, rsv_allowed=rsv_allowed)
    outcomes, frames = [], []
    for chunk in chunks:
        try:
            got, error = reader.feed(chunk), None
        except FrameError as exc:
            got, error = reader.completed, (exc.close_code, exc.reason)
        frames.append(list(got))
        outcomes.append(([frame_fields(f) for f in got], error, *state(reader)))
        if error is not None:
            break
    return outcomes, frames


def item_fields(item) -> tuple:
    if hasattr(item, "fin"):
        return ("frame", *frame_fields(item))
    return ("message", item.opcode, bytes(item.payload), item.rsv, bytes(item.raw), item.frames)


def assemble(module, max_size, validate, frame_lists) -> list:
    assembler = module.MessageAssembler(max_size, validate)
    out = []
    for frames in frame_lists:
        try:
            got, error = assembler.feed(frames), None
        except FrameError as exc:
            got, error = assembler.completed, (exc.close_code, exc.reason)
        out.append(([item_fields(i) for i in got], error, assembler.messages, assembler.in_message))
        if error is not None:
            break
    return out


def utf8_may_continue(data: bytes, final: bool) -> bool:
    """Is ``data`` valid UTF-8 (``final``) or the start of some valid UTF-8 text?"""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    tail = decoder.getstate()[0]
    if not tail:
        return True
    # Python's decoder waits on some dead prefixes (e.g. ED A0, a surrogate): complete the
    # character with the smallest valid bytes and see.
    needed = 2 if tail[0] < 0xE0 else 3 if tail[0] < 0xF0 else 4
    second = {0xE0: 0xA0, 0xF0: 0x90}.get(tail[0], 0x80)
    completion = (bytes([second]) if len(tail) == 1 else b"") + b"\x80" * (needed - max(len(tail), 2))
    try:
        (tail + completion).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def model_assembler(module, max_size, validate, frames) -> None:
    """The primary assembler fed frame by frame against an independent model of its rules."""
    assembler = module.MessageAssembler(max_size, validate)
    opcode, rsv, payload = 0, 0, b""
    for frame in frames:
        expected_error = expected = None
        if frame.opcode >= OP_CLOSE:
            expected = [("frame", *frame_fields(frame))]
        elif frame.opcode == 0 and not opcode:
            expected_error = 1002
        elif frame.opcode != 0 and opcode:
            expected_error = 1002
        else:
            if frame.opcode:
                opcode, rsv, payload = frame.opcode, frame.rsv, b""
            payload += bytes(frame.payload)
            check_text = opcode == 1 and validate and not rsv & 0x40
            if max_size and len(payload) > max_size:
                expected_error = 1009
            elif check_text and not utf8_may_continue(payload, frame.fin):
                expected_error = 1007
            elif frame.fin:
                expected = [("message", opcode, payload, rsv)]
                opcode = 0
            else:
                expected = []
        try:
            got = [item_fields(i) for i in assembler.feed([frame])]
        except FrameError as exc:
            assert exc.close_code == expected_error, (exc.close_code, expected_error, frame_fields(frame))
            return
        assert expected_error is None, (expected_error, frame_fields(frame))
        got = [g[:4] if g[0] == "message" else g for g in got]
        assert got == expected, (got, expected)
        if got and got[0][0] == "message" and got[0][1] == 1 and validate and not got[0][3] & 0x40:
            got[0][2].decode("utf-8")


# --- builders -------------------------------------------------------------------------------------


def unmasked(frame: bytes) -> bytes:
    """A masked frame as if built unmasked (the key is random)."""
    head_len = {126: 4, 127: 10}.get(frame[1] & 0x7F, 2)
    key = frame[head_len : head_len + 4]
    return bytes([frame[0], frame[1] & 0x7F]) + frame[2:head_len] + apply_mask(frame[head_len + 4 :], key)


def build(function, *args, mask: bool, **kwargs):
    try:
        frame = function(*args, mask=mask, **kwargs)
    except (ValueError, OverflowError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    assert bool(frame[1] & 0x80) == mask
    return unmasked(frame) if mask else frame


def check_builders(stream: bytes) -> None:
    if len(stream) < 2:
        return
    opcode, fin, rsv, mask = stream[0] & 0x0F, bool(stream[0] & 0x80), stream[0] & 0x70, bool(stream[1] & 0x80)
    payload = stream[2:]
    results = [build(m.build_frame, opcode, payload, fin=fin, rsv=rsv, mask=mask) for m in twins()]
    assert all(r == results[0] for r in results), results
    for module in twins():
        built = module.build_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask)
        reader = module.FrameReader(mask, 0, rsv_allowed=0x70)
        try:
            frames = reader.feed(built)
        except FrameError:
            continue  # a frame the protocol forbids (reserved opcode, a bad control frame...)
        assert [frame_fields(f) for f in frames] == [(fin, opcode, payload, rsv, built)], frames
    code = int.from_bytes(stream[:2], "big")
    reason = stream[2:].decode("utf-8", "replace")[: stream[0] % 130]
    results = [build(m.build_close, code, reason, mask=mask) for m in twins()]
    assert all(r == results[0] for r in results), results
    if isinstance(results[0], bytes):
        for module in twins():
            tracker = module.FrameTracker(mask)
            try:
                tracker.feed(module.build_close(code, reason, mask=mask))
            except FrameError as exc:
                assert exc.close_code == 1002 and (code < 1000 or code >= 5000 or 1004 <= code <= 1006
                                                   or code == 1015 or 1016 <= code < 3000), (code, exc)
                continue
            assert tracker.close_code == code and tracker.frames == 1, (code, tracker.close_code)


# --- one input ------------------------------------------------------------------------------------


def check(data: bytes) -> None:
    if len(data) < 4:
        return
    flags, frame_limit, message_limit, seed = data[0], data[1], data[2], data[3]
    stream = data[4:]
    masked = bool(flags & MASKED)
    rsv_allowed = RSV_CHOICES[(flags >> RSV_SHIFT) & 3]
    max_frame_size, max_message_size = size_limit(frame_limit), size_limit(message_limit)
    validate = bool(flags & VALIDATE_UTF8)
    chunks = split_points(stream, seed)
    if flags & AS_VIEW:
        chunks = [memoryview(c) for c in chunks]
    elif flags & AS_BYTEARRAY:
        chunks = [bytearray(c) for c in chunks]
    config = (masked, rsv_allowed, max_frame_size)

    tracked = [track(m, config, chunks) for m in twins()]
    assert all(t == tracked[0] for t in tracked), tracked
    final = tracked[0][-1]
    at_error = next((t for t in tracked[0] if t[0] is not None), None)  # the state when it broke
    first_error = at_error[0] if at_error is not None else None

    pong_only = not flags & EVERY_FRAME
    to_frame = [track_to_frame(m, config, chunks, pong_only) for m in twins()]
    assert all(t == to_frame[0] for t in to_frame), to_frame
    stops, to_frame_final = to_frame[0]
    if at_error is None:
        assert to_frame_final == final, (to_frame_final, final)
    else:  # bytes_in differs: the chunk's rest was not fed to a tracker that broke on a stop's byte
        without_bytes_in = lambda outcome: outcome[:5] + outcome[6:]  # noqa: E731
        assert without_bytes_in(to_frame_final) == without_bytes_in(at_error), (to_frame_final, at_error)

    reader_mask = None if flags & EITHER_MASK else masked
    read_results = [read(m, reader_mask, max_frame_size, rsv_allowed, chunks) for m in twins()]
    assert all(r[0] == read_results[0][0] for r in read_results), [r[0] for r in read_results]
    outcomes = read_results[0][0]
    wire = b"".join(bytes(c) for c in chunks)
    raws = b"".join(fields[4] for outcome in outcomes for fields in outcome[0])
    last = outcomes[-1] if outcomes else None
    if last is not None:
        assert raws == wire[: last[-1]], "the frames' wire bytes are not the stream"
        if reader_mask is not None:  # the same rules as the tracker's: the same frames and error
            assert last[1] == first_error and last[2] == final[1], (last[1:], final, first_error)

    assembled = [assemble(m, max_message_size, validate, r[1]) for m, r in zip(twins(), read_results)]
    assert all(a == assembled[0] for a in assembled), assembled
    model_assembler(primary, max_message_size, validate, [f for fs in read_results[0][1] for f in fs])

    check_builders(stream)


if __name__ == "__main__":
    run_atheris(load, check)
