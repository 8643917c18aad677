"""A member that accepts TCP connections, reads everything, and never answers.

    python blackhole.py [--port 0]

Prints "READY <port>" on stdout once listening, then "CONN <n>" for each accepted
connection and "DATA <n> <bytes>" as bytes arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="blackhole")
    args = ap.parse_args()
    asyncio.run(amain(args))


async def amain(args) -> None:
    counter = itertools.count(1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = next(counter)
        print(f"CONN {n}", flush=True)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                print(f"DATA {n} {len(data)}", flush=True)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    main()
