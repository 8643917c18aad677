"""build_frame and build_close, pure and compiled, against tests/vectors/frames_build.json.

Masked frames carry a fresh random key, so they are compared by unmasking: the same header with
the mask bit, then a key, then the payload masked with that key.
"""

from __future__ import annotations

import array
import json
from pathlib import Path

import pytest

from wsproxy import _speedups
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol.frames import OP_BINARY, OP_CONT, OP_PING, OP_TEXT
from wsproxy.protocol.mask import apply_mask

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "frames_build.json").read_text())
ERRORS = {"ValueError": ValueError, "OverflowError": OverflowError}


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


def unmask_frame(data: bytes) -> bytes:
    """The frame as it would be unmasked: mask bit cleared, key removed, payload unmasked."""
    assert data[1] & 0x80, "not masked"
    head_len = {126: 4, 127: 10}.get(data[1] & 0x7F, 2)
    key = data[head_len : head_len + 4]
    head = bytes([data[0], data[1] & 0x7F]) + data[2:head_len]
    return head + apply_mask(data[head_len + 4 :], key)


@pytest.mark.parametrize("vector", VECTORS["build_frame"], ids=[v["name"] for v in VECTORS["build_frame"]])
def test_build_frame_vector(twin, vector):
    payload, expected = hex_parts(vector["payload"]), hex_parts(vector["expected"])
    args = (vector["opcode"], payload)
    kwargs = {"fin": vector["fin"], "rsv": vector["rsv"]}
    assert twin.build_frame(*args, mask=False, **kwargs) == expected
    masked = twin.build_frame(*args, mask=True, **kwargs)
    assert len(masked) == len(expected) + 4
    assert unmask_frame(masked) == expected


@pytest.mark.parametrize("vector", VECTORS["build_close"], ids=[v["name"] for v in VECTORS["build_close"]])
def test_build_close_vector(twin, vector):
    expected = bytes.fromhex(vector["expected"])
    assert twin.build_close(vector["code"], vector["reason"], mask=False) == expected
    assert unmask_frame(twin.build_close(vector["code"], vector["reason"], mask=True)) == expected


@pytest.mark.parametrize(
    "vector", VECTORS["build_frame_errors"], ids=[v["name"] for v in VECTORS["build_frame_errors"]]
)
def test_build_frame_errors(twin, vector):
    with pytest.raises(ERRORS[vector["error"]]) as caught:
        twin.build_frame(vector["opcode"], b"", mask=False, rsv=vector["rsv"])
    assert str(caught.value) == vector["message"]


@pytest.mark.parametrize(
    "vector", VECTORS["build_close_errors"], ids=[v["name"] for v in VECTORS["build_close_errors"]]
)
def test_build_close_errors(twin, vector):
    with pytest.raises(ERRORS[vector["error"]]) as caught:
        twin.build_close(vector["code"], vector["reason"], mask=True)
    if vector["message"]:
        assert str(caught.value) == vector["message"]


@pytest.mark.parametrize(
    "payload", [b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4], array.array("B", b"abc")]
)
def test_payload_is_any_buffer(twin, payload):
    assert twin.build_frame(OP_BINARY, payload, mask=False) == b"\x82\x03abc"


@pytest.mark.parametrize("payload", ["text", 3, None, [1, 2]])
def test_payload_must_be_a_buffer(twin, payload):
    with pytest.raises(TypeError):
        twin.build_frame(OP_TEXT, payload, mask=False)


def test_fin_and_mask_are_truthiness(twin):
    assert twin.build_frame(OP_TEXT, b"", fin=0, mask=0) == b"\x01\x00"
    assert twin.build_frame(OP_TEXT, b"", mask=1)[1] == 0x80


def test_a_fresh_key_each_time(twin):
    keys = {twin.build_frame(OP_TEXT, b"x", mask=True)[2:6] for _ in range(8)}
    assert len(keys) > 1


def test_mask_and_rsv_are_keyword_only(twin):
    with pytest.raises(TypeError):
        twin.build_frame(OP_TEXT, b"", True, False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        twin.build_close(1000, "", False)  # type: ignore[misc]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [False, True])
def test_round_trip_through_the_reader(twin, length, mask):
    payload = bytes(i & 0xFF for i in range(length))
    data = twin.build_frame(OP_BINARY, payload, mask=mask)
    reader = twin.FrameReader(masked=mask)
    frames = reader.feed(data[:3]) + reader.feed(data[3:])
    assert frames == [twin.Frame(True, OP_BINARY, payload, 0)]
    assert frames[0].raw == data


def test_fin_rsv_and_fragments_round_trip(twin):
    stream = (
        twin.build_frame(OP_TEXT, b"frag", fin=False, rsv=0x40, mask=True)
        + twin.build_frame(OP_PING, b"", mask=True)
        + twin.build_frame(OP_CONT, "ment".encode(), mask=True)
    )
    frames = twin.FrameReader(masked=True, rsv_allowed=0x40).feed(stream)
    assert frames == [
        twin.Frame(False, OP_TEXT, b"frag", 0x40),
        twin.Frame(True, OP_PING, b"", 0),
        twin.Frame(True, OP_CONT, b"ment", 0),
    ]
