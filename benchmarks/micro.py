#!/usr/bin/env python3
"""Micro-benchmark: the C accelerators against their pure-Python twins, in one process.

    python benchmarks/micro.py [--quick] [--json]

Imports both twins directly (``wsproxy._ext.frames``/``wsproxy._ext.mask`` and
``wsproxy.protocol.frames``/``wsproxy.protocol.mask``), whatever WSPROXY_NO_EXTENSIONS
says, and times the same operations on the same bytes:

- ``FrameTracker.feed``, many small frames: 8,192 masked 64-byte binary frames (~573 KB),
  fed in 64 KiB chunks as a relay would get them from the socket; ns per frame.
- ``FrameTracker.feed``, a few large frames: 8 masked 1 MiB frames fed in 64 KiB chunks;
  ns per 64 KiB chunk (the tracker skips payload, so the cost is per chunk and header).
- ``apply_mask`` of 64 B, 4 KiB and 1 MiB: ns per call.
- ``FrameReader.feed`` (inspect mode: whole frames, payloads unmasked) on the same 8,192
  small frames, and ``MessageAssembler.feed`` on them as one-frame messages; ns per frame.
- Informative, outside the issue's ">= 10x on frame parsing and masking" target: the HTTP
  head glue (``scan_fields`` of a 7-field upgrade request, ``rewrite_head`` of it) and
  ``build_frame`` of a masked 64 B frame (which includes ``os.urandom(4)``).

Each figure is the median of 5 timings, each long enough (>= 0.1 s, 0.02 s in --quick)
to read; the ratio is pure / C (how many times faster C is).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time

from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import http_head as py_head
from wsproxy.protocol import mask as py_mask

try:
    from wsproxy._ext import frames as c_frames
    from wsproxy._ext import http_head as c_head
    from wsproxy._ext import mask as c_mask
except ImportError as e:  # not built
    c_frames = c_mask = c_head = None
    C_ERROR = str(e)
else:
    C_ERROR = None

KEY = b"\x12\x34\x56\x78"
CHUNK = 64 * 1024


def masked_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + KEY + py_mask.apply_mask(payload, KEY)


def chunks(buf: bytes, size: int = CHUNK) -> list[bytes]:
    return [buf[i:i + size] for i in range(0, len(buf), size)]


def timeit(fn, min_time: float, repeats: int = 5) -> float:
    """Median seconds per call of ``fn()``."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 4 or n >= 1 << 24:
            break
        n *= 4
    n = max(1, int(n * (min_time / max(dt, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    min_time = 0.02 if quick else 0.1
    small = chunks(b"".join(masked_frame(os.urandom(64)) for _ in range(8192)))
    n_small = 8192
    large = chunks(b"".join(masked_frame(os.urandom(1 << 20)) for _ in range(8)))

    def feed_all(mod, parts):
        def go():
            t = mod.FrameTracker(True)
            for p in parts:
                t.feed(p)
        return go

    rows = []

    def row(name, unit_div, unit, py_fn, c_fn, target=True):
        py_s = timeit(py_fn, min_time)
        c_s = timeit(c_fn, min_time) if c_fn is not None else None
        rows.append({
            "name": name, "unit": unit, "target": target,
            "py_ns": py_s * 1e9 / unit_div,
            "c_ns": (c_s * 1e9 / unit_div) if c_s is not None else None,
            "speedup": (py_s / c_s) if c_s else None,
        })

    have_c = c_frames is not None
    row("FrameTracker.feed, 8,192 x 64 B frames", n_small, "ns/frame",
        feed_all(py_frames, small), feed_all(c_frames, small) if have_c else None)
    row("FrameTracker.feed, 8 x 1 MiB frames", len(large), "ns/64 KiB chunk",
        feed_all(py_frames, large), feed_all(c_frames, large) if have_c else None)
    for size, label in ((64, "64 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")):
        data = os.urandom(size)
        row(f"apply_mask, {label}", 1, "ns/call",
            lambda d=data: py_mask.apply_mask(d, KEY, 1),
            (lambda d=data: c_mask.apply_mask(d, KEY, 1)) if have_c else None)

    def read_all(mod, parts):
        def go():
            r = mod.FrameReader(masked=True)
            for p in parts:
                r.feed(p)
        return go

    row("FrameReader.feed, 8,192 x 64 B frames", n_small, "ns/frame",
        read_all(py_frames, small), read_all(c_frames, small) if have_c else None)

    def assemble_all(mod):
        reader = mod.FrameReader(masked=True)
        got = [f for p in small for f in reader.feed(p)]

        def go():
            mod.MessageAssembler().feed(got)
        return go

    row("MessageAssembler.feed, 8,192 one-frame messages", n_small, "ns/message",
        assemble_all(py_frames), assemble_all(c_frames) if have_c else None)
    fields = [(b"Host", b"example.com:8080"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
              (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13"),
              (b"Origin", b"http://example.com"), (b"User-Agent", b"bench/1.0")]
    row("scan_fields, a 7-field upgrade request", 1, "ns/call",
        lambda: py_head.scan_fields(fields), (lambda: c_head.scan_fields(fields)) if have_c else None,
        target=False)
    headers, names, _, _ = py_head.scan_fields(fields)
    drop = frozenset({"connection", "upgrade"})
    tail = [("X-Forwarded-For", "192.0.2.1"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
    row("rewrite_head, the same request for the member", 1, "ns/call",
        lambda: py_head.rewrite_head("GET /chat HTTP/1.1", headers, names, drop, tail),
        (lambda: c_head.rewrite_head("GET /chat HTTP/1.1", headers, names, drop, tail)) if have_c else None,
        target=False)
    payload = os.urandom(64)
    row("build_frame, masked 64 B (os.urandom key)", 1, "ns/call",
        lambda: py_frames.build_frame(2, payload, mask=True),
        (lambda: c_frames.build_frame(2, payload, mask=True)) if have_c else None, target=False)
    return rows


def format_rows(rows: list[dict]) -> str:
    out = ["| operation | unit | pure Python | C | C speed-up |", "|---|---|---:|---:|---:|"]
    for r in rows:
        c = f"{r['c_ns']:,.1f}" if r["c_ns"] is not None else "n/a"
        s = f"{r['speedup']:,.1f}×" if r["speedup"] is not None else "n/a"
        out.append(f"| {r['name']} | {r['unit']} | {r['py_ns']:,.1f} | {c} | {s} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    a = ap.parse_args(argv)
    rows = run(a.quick)
    if a.json:
        print(json.dumps({"rows": rows, "c_error": C_ERROR}))
    else:
        print(format_rows(rows))
        if C_ERROR:
            print(f"(C twins not importable: {C_ERROR})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
