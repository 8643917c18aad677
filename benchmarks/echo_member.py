#!/usr/bin/env python3
"""The benchmark's echo member: a picows (Cython) WebSocket echo server on uvloop.

Every data frame is sent back as it came (same opcode, same FIN, same payload), so a
message of any size is echoed frame by frame without reassembly; a Close is answered with
a Close carrying the same code, then the member closes the TCP connection (a server closes
first, RFC 6455 §7.1.1). Pings are answered by picows itself.

    python benchmarks/echo_member.py --port 9100 [--host 127.0.0.1]

It prints ``ready <port>`` on stdout once it listens. It is never meant to be the
bottleneck: run.py measures the same cases against it directly ("direct" column), and
every proxy figure can be read beside that one.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

CLOSE = WSMsgType.CLOSE
PING = WSMsgType.PING
PONG = WSMsgType.PONG


class Echo(WSListener):
    __slots__ = ()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        t = frame.msg_type
        if t is CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif t is not PING and t is not PONG:
            transport.send(t, frame.get_payload_as_memoryview(), frame.fin)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(host: str, port: int) -> None:
    server = await ws_create_server(
        lambda _request: Echo(), host, port,
        max_frame_size=64 * 1024 * 1024,
        read_buffer_init_size=4096,   # grows on demand; keeps 9,000 idle connections small
        websocket_handshake_timeout=30,
        backlog=4096,
        reuse_address=True,
    )
    sock = server.sockets[0]
    print(f"ready {sock.getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("picows").setLevel(logging.ERROR)  # no flow-control chatter
    _raise_nofile()
    try:
        uvloop.run(main(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)
