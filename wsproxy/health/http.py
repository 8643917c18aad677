"""http check: ``GET path HTTP/1.1`` with ``Connection: close``; the status line decides.

Passes on a status in ``health.status`` when that is set, else on any 2xx or 3xx (HAProxy's
``option httpchk`` default). Only the status line is read: the body does not matter, and
the connection is closed right after. The round trip recorded is request to status line.
"""

from __future__ import annotations

import time

from wsproxy.health.probe import CheckFailed, Probe, close_quietly, connect

USER_AGENT = "wsproxy-health"


def request(addr, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n"
        f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\n\r\n"
    ).encode("latin-1")


def parse_status(line: bytes) -> int:
    """The status code of an HTTP/1.x status line; CheckFailed when it is not one."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        shown = line[:40].decode("latin-1", "replace").strip() or "nothing"
        raise CheckFailed(f"not an HTTP response: {shown!r}")
    return int(parts[1])


def passes(status: int, wanted: tuple[int, ...]) -> bool:
    return status in wanted if wanted else 200 <= status < 400


async def run(addr, health, probe: Probe, tls=None) -> None:
    """``tls``: the pool's tls.MemberTls; the check then speaks TLS (its handshake is in "connect")."""
    probe.phase = "connect"
    reader, writer = await connect(addr, tls)
    try:
        probe.phase = "response"
        started = time.perf_counter_ns()
        writer.write(request(addr, health.path))
        line = await reader.readline()
        probe.rtt_us = (time.perf_counter_ns() - started) // 1000
        if not line:
            raise CheckFailed("closed without a response")
        status = parse_status(line)
        if not passes(status, health.status):
            raise CheckFailed(f"status {status}")
    finally:
        await close_quietly(writer)
