"""HTTP member for the integration tests (aiohttp).

    python http_app.py --name a [--port 0]

Every response carries "X-Member: <name>". Paths:
- GET /                   -> the name (text)
- POST /echo              -> the request body streamed back; chunked response when the
                             request was chunked, else with Content-Length
- GET /bytes/{n}          -> n bytes (repeating a..z)
- GET /longpoll?seconds=S -> sleeps S seconds, then "slept S"
- GET /headers            -> JSON {"headers": [[name, value], ...], "peer": [host, port]}
- GET /conn               -> JSON {"peer": [host, port], "conn_id": n, "request_no": k}
                             (conn_id identifies the member-side TCP connection)
- GET /seen               -> JSON list of [method, target] of every request seen so far
                             (except /seen itself)
- GET /ws                 -> WebSocket echo
- anything else           -> 200 "<name> <method> <path>"
Prints "READY <port>" on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

from aiohttp import WSMsgType, web

SEEN: list[list[str]] = []
CONN_IDS: dict[int, list[int]] = {}
_next_conn = itertools.count(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="http")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert", default=None, help="serve https: PEM certificate chain (with --tls-key)")
    ap.add_argument("--tls-key", default=None)
    ap.add_argument("--tls-client-ca", default=None, help="require a client certificate from this CA (mTLS)")
    args = ap.parse_args()
    asyncio.run(amain(args))


def tls_context(args):
    if not args.tls_cert:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=args.tls_client_ca)
    return context


def make_app(name: str) -> web.Application:
    @web.middleware
    async def tag(request: web.Request, handler):
        if request.path != "/seen":
            SEEN.append([request.method, request.path_qs])
        resp = await handler(request)
        if not resp.prepared:
            resp.headers["X-Member"] = name
        return resp

    async def root(request):
        return web.Response(text=name)

    async def echo(request: web.Request):
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        resp = web.StreamResponse(status=200, headers={"X-Member": name,
                                                        "Content-Type": "application/octet-stream"})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = request.content_length or 0
        await resp.prepare(request)
        async for data in request.content.iter_chunked(65536):
            await resp.write(data)
        await resp.write_eof()
        return resp

    async def nbytes(request):
        n = int(request.match_info["n"])
        pattern = b"abcdefghijklmnopqrstuvwxyz"
        body = (pattern * (n // len(pattern) + 1))[:n]
        return web.Response(body=body, content_type="application/octet-stream")

    async def longpoll(request):
        seconds = float(request.query.get("seconds", "1"))
        await asyncio.sleep(seconds)
        return web.Response(text=f"slept {seconds:g}")

    async def headers(request):
        return web.json_response({
            "headers": [[k, v] for k, v in request.headers.items()],
            "peer": list(request.transport.get_extra_info("peername") or ()),
            "client_cert": (request.transport.get_extra_info("peercert") or {}).get("subjectAltName"),
        })

    async def conn(request):
        transport = request.transport
        key = id(transport)
        entry = CONN_IDS.get(key)
        if entry is None or entry[2] is not transport:
            entry = CONN_IDS[key] = [next(_next_conn), 0, transport]
        entry[1] += 1
        return web.json_response({
            "peer": list(transport.get_extra_info("peername") or ()),
            "conn_id": entry[0],
            "request_no": entry[1],
        })

    async def seen(request):
        return web.json_response(SEEN)

    async def ws(request):
        wsr = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await wsr.prepare(request)
        async for msg in wsr:
            if msg.type == WSMsgType.TEXT:
                await wsr.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await wsr.send_bytes(msg.data)
        return wsr

    async def other(request):
        return web.Response(text=f"{name} {request.method} {request.path}")

    app = web.Application(middlewares=[tag], client_max_size=1 << 30)
    app.router.add_get("/", root)
    app.router.add_post("/echo", echo)
    app.router.add_get("/bytes/{n:\\d+}", nbytes)
    app.router.add_get("/longpoll", longpoll)
    app.router.add_get("/headers", headers)
    app.router.add_get("/conn", conn)
    app.router.add_get("/seen", seen)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


async def amain(args) -> None:
    app = make_app(args.name)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=300)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=tls_context(args))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    await runner.cleanup()


if __name__ == "__main__":
    main()
