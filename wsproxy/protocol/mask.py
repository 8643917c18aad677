"""WebSocket payload masking (RFC 6455 §5.3), the pure-Python reference.

The compiled twin is ``ext/mask.pyx`` (``wsproxy._ext.mask``); ``wsproxy._speedups`` picks one.
Both are checked against ``tests/vectors/mask.json``.
"""

from __future__ import annotations

__all__ = ["apply_mask"]


def apply_mask(data: bytes | bytearray | memoryview, key: bytes, offset: int = 0) -> bytes:
    """Return ``data`` XORed with the 4-byte ``key``, as new bytes.

    ``offset`` is the position in the key stream where ``data`` starts (only ``offset % 4``
    matters), so a payload can be (un)masked chunk by chunk: pass the number of payload bytes
    already processed. Masking is its own inverse.
    """
    key = bytes(memoryview(key))
    if len(key) != 4:
        raise ValueError(f"mask key must be 4 bytes, not {len(key)}")
    if not isinstance(data, (bytes, bytearray)):
        data = memoryview(data).cast("B")  # count bytes, whatever the item format
    size = len(data)
    shift = offset % 4
    key_stream = key[shift:] + key[:shift]
    # One big-int XOR over the whole buffer runs in C inside CPython: far faster than a
    # per-byte loop in Python (the same trick as websockets' and aiohttp's pure versions).
    repeated = (key_stream * (size // 4 + 1))[:size]
    masked = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return masked.to_bytes(size, "little")
