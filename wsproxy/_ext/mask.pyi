"""Compiled twin of wsproxy.protocol.mask (built from ext/mask.pyx)."""

from typing import TypeAlias

_Bytes: TypeAlias = bytes | bytearray | memoryview

__all__ = ["apply_mask"]

def apply_mask(data: _Bytes, key: _Bytes, offset: int = 0) -> bytes:
    """Return ``data`` XORed with the 4-byte ``key``, starting at key position ``offset % 4``."""
