"""Run only the demo members: `python -m wsproxy.demo [--host H] [PORT ...]` (default 9001 9002).

With wsproxy/demo/sample.conf this gives the `wsproxy demo` setup as separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from wsproxy.demo import DEMO_BACKENDS, bound_port, start_backends, stop_backends


async def main(host: str, ports: list[int]) -> None:
    servers = await start_backends(host, ports)
    for name, server in zip(DEMO_BACKENDS, servers):
        print(f"{name} on http://{host}:{bound_port(server)}/", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # Close 1001 to the clients, then exit
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stop_backends(servers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m wsproxy.demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("ports", nargs="*", type=int, default=[9001, 9002])
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.ports))
