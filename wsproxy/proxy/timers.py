"""Deadlines on futures, without asyncio.timeout's machinery.

A session waits on plain futures (its endpoint's wake-up, the member's response head). For
those, a deadline is one ``loop.call_at`` that fails the future with TimeoutError: no Task
lookup and no cancellation to undo, where ``asyncio.timeout`` costs a ``current_task()``
and ``get_running_loop()`` (a getpid system call each on Python 3.11) on every use, on
the handshake path (benchmarks: µs CPU per handshake).
"""

from __future__ import annotations

import asyncio


async def wait_until(loop: asyncio.AbstractEventLoop, future: asyncio.Future, when: float):
    """Await ``future``; at loop time ``when`` it fails with TimeoutError if still pending."""
    handle = loop.call_at(when, _expire, future)
    try:
        return await future
    finally:
        handle.cancel()


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
