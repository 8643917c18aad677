"""HTTP head glue: the per-head work around llhttp, each in one pass over the fields.

Pure-Python twin of ``wsproxy._ext.http_head`` (ext/http_head.pyx); ``wsproxy._speedups``
picks one. Both are sans-I/O and stateless:

- ``scan_fields(fields)``: llhttp's raw ``(name, value)`` byte pairs of one head become the
  decoded header list (latin-1; trailing whitespace, which is not part of a value, dropped),
  the names lowercased (ASCII only: a valid name is a token; every later lookup uses them), the first problem found (an invalid
  name, or NUL/CR/LF in a value: llhttp rejects them already, this is defence in depth) and
  the bytes the fields take on the wire without optional whitespace (for the head size limit).
- ``rewrite_head(start_line, headers, names, drop, tail, first)``: the head a proxy forwards,
  serialized into one buffer: the start line, ``first`` (if any), every header whose
  lowercased name is not in ``drop`` (hop-by-hop, forged forwarding claims...), then
  ``tail`` (X-Forwarded-*, Connection/Upgrade, Set-Cookie...), and the blank line. A name
  that is not a token or a value with NUL/CR/LF raises ValueError: nothing we send can split
  a message. Strings are latin-1 (what the parser decoded); anything else raises
  UnicodeEncodeError, in both twins.

The C twin gains by never running bytecode per field; the pure one is the reference for the
shared test vectors (tests/vectors/http_head.json) and the differential tests.
"""

from __future__ import annotations

import re
from typing import Collection, Iterable

__all__ = ["scan_fields", "rewrite_head"]

Headers = list[tuple[str, str]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHAR = re.compile(r"[\x00\r\n]")


def scan_fields(fields: list[tuple[bytes, bytes]]) -> tuple[Headers, tuple[str, ...], str | None, int]:
    """(headers, lowercased names, first problem or None, wire bytes of the fields)."""
    headers = []
    names = []
    problem = None
    size = 0
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1")
        value = raw_value.rstrip(b" \t").decode("latin-1")
        headers.append((name, value))
        names.append(raw_name.lower().decode("latin-1"))  # ASCII only, as HTTP names are
        size += len(raw_name) + len(raw_value) + 3
        if problem is None:
            if not _TOKEN.fullmatch(name):
                problem = f"invalid header name {name!r}"
            elif _BAD_VALUE_CHAR.search(value):
                problem = f"invalid character in header {name!r}"
    return headers, tuple(names), problem, size


def rewrite_head(
    start_line: str,
    headers: Iterable[tuple[str, str]],
    names: Iterable[str],
    drop: Collection[str],
    tail: Iterable[tuple[str, str]] = (),
    first: tuple[str, str] | None = None,
) -> bytes:
    """``start_line`` CRLF, ``first``, the headers whose name (lowercased, from ``names``) is
    not in ``drop``, ``tail``, CRLF: latin-1 bytes. ValueError on a field that could split
    the message."""
    lines = [start_line, "\r\n"]
    if first is not None:
        _add(lines, first)
    for (name, value), lowered in zip(headers, names, strict=True):
        if lowered not in drop:
            _add(lines, (name, value))
    for field in tail:
        _add(lines, field)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _add(lines: list[str], field: tuple[str, str]) -> None:
    name, value = field
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_VALUE_CHAR.search(value):
        raise ValueError(f"CR, LF or NUL in the value of header {name!r}")
    lines += (name, ": ", value, "\r\n")
