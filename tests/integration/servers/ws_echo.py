"""WebSocket echo member for the integration tests (websockets library, asyncio).

    python ws_echo.py --name a [--port 0] [--record FILE]

- any path: echo every text/binary message back as it came (text stays text);
- GET /whoami (plain HTTP, no upgrade): 200 with the member's name as the body;
- WebSocket /flood?mb=N[&chunk=K]: send N MiB of binary messages of K KiB (default 64)
  as fast as the connection accepts them (backpressure applies), then a text "done";
  afterwards echo like any other path;
- WebSocket /whoami: sends its name as the first message, then echoes;
- WebSocket /slowread?seconds=S: reads nothing for S seconds, then counts binary bytes
  until a text message, and answers with the count;
- WebSocket /close?code=C&reason=R: closes with that code after the first message.

When a WebSocket connection ends, one JSON line is appended to --record (if given):
  {"name", "path", "rcvd_code" (Close code received, null if none), "sent_code",
   "messages" (data messages received), "sent_bytes" (flood bytes sent)}
Prints "READY <port>" on stdout once listening. max_size is unlimited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="ws")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--record", default=None)
    ap.add_argument("--tls-cert", default=None, help="serve wss: PEM certificate chain (with --tls-key)")
    ap.add_argument("--tls-key", default=None)
    args = ap.parse_args()
    asyncio.run(amain(args))


def tls_context(args):
    if not args.tls_cert:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def record(path: str | None, entry: dict) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()


async def amain(args) -> None:
    name = args.name

    def process_request(connection, request):
        path = urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "")
        if path == "/whoami" and "websocket" not in upgrade.lower():
            return connection.respond(200, name)
        return None

    async def handler(ws) -> None:
        target = ws.request.path
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        stats = {"messages": 0, "sent_bytes": 0}
        try:
            if parts.path == "/whoami":
                await ws.send(name)
            elif parts.path == "/close":
                # close with the given code after the first message
                code = int(query.get("code", ["1000"])[0])
                reason = query.get("reason", [""])[0]
                await ws.recv()
                stats["messages"] += 1
                await ws.close(code, reason)
                return
            elif parts.path == "/slowread":
                # read nothing for `seconds`, then count binary bytes until a text "end"
                await asyncio.sleep(float(query.get("seconds", ["2"])[0]))
                total = 0
                while True:
                    message = await ws.recv()
                    stats["messages"] += 1
                    if isinstance(message, str):
                        break
                    total += len(message)
                await ws.send(str(total))
            elif parts.path == "/flood":
                mb = float(query.get("mb", ["10"])[0])
                chunk = int(float(query.get("chunk", ["64"])[0]) * 1024)
                total = int(mb * 1024 * 1024)
                block = os.urandom(1024 * 1024 + chunk)
                sent = 0
                while sent < total:
                    n = min(chunk, total - sent)
                    off = sent % (1024 * 1024)
                    await ws.send(block[off:off + n])
                    sent += n
                    stats["sent_bytes"] = sent
                await ws.send("done")
            async for message in ws:
                stats["messages"] += 1
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            try:
                await asyncio.wait_for(ws.wait_closed(), 15)
            except Exception:
                pass
            rcvd = ws.protocol.close_rcvd
            sent_close = ws.protocol.close_sent
            record(args.record, {
                "name": name,
                "path": target,
                "rcvd_code": rcvd.code if rcvd is not None else None,
                "rcvd_reason": rcvd.reason if rcvd is not None else None,
                "sent_code": sent_close.code if sent_close is not None else None,
                **stats,
            })

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    async with serve(
        handler,
        args.host,
        args.port,
        process_request=process_request,
        max_size=None,
        max_queue=16,
        ping_interval=None,
        close_timeout=5,
        ssl=tls_context(args),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await stop


if __name__ == "__main__":
    main()
