"""What a check reports while it runs and how it fails.

A check is ``async def run(addr, health, probe) -> None``: it returns when the member
passed, raises ``CheckFailed`` (a short reason) or ``OSError`` when it failed, and is
cancelled by the service's ``timeout``. ``probe.phase`` names the step it is in, so a
timeout's reason says where the member stalled ("timeout (pong)").
"""

from __future__ import annotations

import asyncio


class CheckFailed(Exception):
    """A check's verdict against the member, with a reason short enough for a log line."""


class Probe:
    __slots__ = ("phase", "rtt_us")

    def __init__(self) -> None:
        self.phase = "connect"
        self.rtt_us = -1  # the check's round trip, in µs; -1 = none measured


async def connect(addr, tls=None):
    """(reader, writer) to the member at ``addr``; over TLS with ``tls`` (a tls.MemberTls:
    the pool's context, SNI and name check, as member connections use)."""
    if tls is None:
        return await asyncio.open_connection(addr.host, addr.port)
    return await asyncio.open_connection(addr.host, addr.port, ssl=tls.context,
                                         server_hostname=tls.server_hostname(addr.host))


async def close_quietly(writer) -> None:
    """Close a check's connection; the verdict is already made, so errors do not matter."""
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, RuntimeError):
        pass
