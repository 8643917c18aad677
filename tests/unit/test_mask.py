"""apply_mask, pure and compiled, against tests/vectors/mask.json and each other."""

from __future__ import annotations

import array
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "mask.json").read_text())["vectors"]


def reference_mask(data: bytes, key: bytes, offset: int) -> bytes:
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(impl, vector):
    data, key = bytes.fromhex(vector["data"]), bytes.fromhex(vector["key"])
    assert impl.apply_mask(data, key, vector["offset"]) == bytes.fromhex(vector["expected"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_byte_by_byte(impl, vector):
    # The streaming contract: chunk i starts at key position offset + bytes already masked.
    data, key, offset = bytes.fromhex(vector["data"]), bytes.fromhex(vector["key"]), vector["offset"]
    out = b"".join(impl.apply_mask(data[i : i + 1], key, offset + i) for i in range(len(data)))
    assert out == bytes.fromhex(vector["expected"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(
    data=st.binary(max_size=600),
    key=st.binary(min_size=4, max_size=4),
    offset=st.integers(-10, 10**6),
    cuts=st.lists(st.integers(0, 600), max_size=12),
)
def test_streaming_equals_one_shot(impl, data, key, offset, cuts):
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [impl.apply_mask(data[a:b], key, offset + a) for a, b in zip(bounds, bounds[1:])]
    assert b"".join(pieces) == impl.apply_mask(data, key, offset) == reference_mask(data, key, offset)


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_accepts_buffers_and_returns_new_bytes(impl, make):
    raw = bytes(range(37))
    data = make(raw)
    out = impl.apply_mask(data, make(b"\x01\x02\x03\x04"), 2)
    assert type(out) is bytes
    assert out == reference_mask(raw, b"\x01\x02\x03\x04", 2)
    assert bytes(data) == raw  # input untouched


def test_memoryview_slice_and_other_item_formats(impl):
    raw = bytes(range(64))
    assert impl.apply_mask(memoryview(raw)[3:50], b"abcd", 1) == reference_mask(raw[3:50], b"abcd", 1)
    words = array.array("H", range(10))  # masked as its 20 raw bytes
    assert impl.apply_mask(words, b"abcd") == reference_mask(words.tobytes(), b"abcd", 0)


def test_masking_twice_is_identity(impl):
    data = os.urandom(1000)
    key = os.urandom(4)
    assert impl.apply_mask(impl.apply_mask(data, key, 3), key, 3) == data


def test_large_buffer(impl):
    data = os.urandom((1 << 20) + 5)
    key = os.urandom(4)
    out = impl.apply_mask(data, key, 1)
    assert out[:9] == reference_mask(data[:9], key, 1)
    assert out[-7:] == reference_mask(data[-7:], key, 1 + len(data) - 7)


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_key_must_be_4_bytes(impl, key):
    with pytest.raises(ValueError, match="4 bytes"):
        impl.apply_mask(b"data", key)


def test_non_buffer_rejected(impl):
    with pytest.raises(TypeError):
        impl.apply_mask("text", b"abcd")
    with pytest.raises(TypeError):
        impl.apply_mask(b"data", 1234)
