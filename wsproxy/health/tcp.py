"""tcp check: the member accepts a TCP connection (then we close it).

The round trip recorded is the connect time (SYN to established).
"""

from __future__ import annotations

import asyncio
import time

from wsproxy.health.probe import Probe, close_quietly


async def run(addr, health, probe: Probe, tls=None) -> None:
    """``tls`` is ignored: a tcp check proves the port accepts connections, nothing more."""
    probe.phase = "connect"
    started = time.perf_counter_ns()
    _reader, writer = await asyncio.open_connection(addr.host, addr.port)
    probe.rtt_us = (time.perf_counter_ns() - started) // 1000
    probe.phase = "close"
    await close_quietly(writer)
