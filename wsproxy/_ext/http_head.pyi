"""Compiled twin of wsproxy.protocol.http_head (built from ext/http_head.pyx)."""

from typing import Collection, Iterable

__all__ = ["scan_fields", "rewrite_head"]

def scan_fields(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[str, str]], tuple[str, ...], str | None, int]:
    """(headers, lowercased names, first problem or None, wire bytes of the fields)."""

def rewrite_head(
    start_line: str,
    headers: Iterable[tuple[str, str]],
    names: Iterable[str],
    drop: Collection[str],
    tail: Iterable[tuple[str, str]] = (),
    first: tuple[str, str] | None = None,
) -> bytes:
    """The head a proxy forwards, serialized into one buffer (see the pure module)."""
