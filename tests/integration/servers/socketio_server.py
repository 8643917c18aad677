"""Socket.IO member for the integration tests: python-socketio's AsyncServer under aiohttp,
sharing its broadcasts with the other members through a Redis server
(``socketio.AsyncRedisManager``), as in Socket.IO's "using multiple nodes" setup.

    python socketio_server.py --name a --redis redis://127.0.0.1:6379/0 [--port 0]
                              [--ping-interval 25] [--ping-timeout 20] [--record FILE]
                              [--cookie NAME]

Events (a handler's return value is the ack the client receives):
- ``whoami``       -> {"server": name, "sid": sid, "transport": "polling" | "websocket"}
- ``echo`` (data)  -> {"server": name, "data": data, "transport": ...}
- ``shout`` (data) -> emits "broadcast" {"from": name, "data": data} to every client of the
                      cluster (through Redis), then acks {"server": name}

Engine.IO keeps its sessions in each member's memory: a member answers 400 "Invalid session"
to a polling request or a WebSocket upgrade for a sid that another member handed out, which
is why a Socket.IO cluster needs sticky sessions in front of it.

--record FILE gets one JSON line per fact, all with "name":
- {"kind": "http", "method", "transport", "sid" (Engine.IO sid or null), "status", "cookies"
  (names of the cookies received)} for every Engine.IO request, when its handler returns
  (a WebSocket: when it ends, status 101);
- {"kind": "open", "sid", "transport"} when this member hands out an Engine.IO sid;
- {"kind": "connect" | "disconnect" | "event", "sid" (Socket.IO sid), "eio_sid", "transport",
  "event"} for Socket.IO connections and events.
--cookie NAME passes ``cookie=NAME`` to ``socketio.AsyncServer`` (python-engineio's option):
the Engine.IO handshake response of a polling client (the one without a sid) then carries
``Set-Cookie: NAME=<Engine.IO sid>; Path=/; SameSite=Lax``, the cookie that the
socketio_sticky example plugin learns sid -> member from. A WebSocket-only handshake gets no
cookie (python-engineio sets it on the polling handshake only). Without the flag: no cookie.
Prints "READY <port>" once listening and subscribed to the Redis channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal

import socketio
from aiohttp import web

OPEN_SID = re.compile(rb'^0\{.*?"sid":\s*"([^"]+)"')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="sio")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    ap.add_argument("--ping-interval", type=float, default=25.0)
    ap.add_argument("--ping-timeout", type=float, default=20.0)
    ap.add_argument("--record", default=None)
    ap.add_argument("--cookie", default=None, metavar="NAME",
                    help="Engine.IO sid cookie set on polling handshakes (AsyncServer(cookie=NAME))")
    args = ap.parse_args()
    asyncio.run(amain(args))


class Recorder:
    def __init__(self, name: str, path: str | None) -> None:
        self.name = name
        self.path = path

    def __call__(self, kind: str, **fields) -> None:
        if not self.path:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": self.name, "kind": kind, **fields}) + "\n")


def make_server(name: str, redis_url: str, record: Recorder, *, ping_interval: float,
                ping_timeout: float, cookie: str | None = None) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=socketio.AsyncRedisManager(redis_url),
                               ping_interval=ping_interval, ping_timeout=ping_timeout, cookie=cookie)

    def facts(sid: str) -> dict:
        try:
            transport = sio.transport(sid)
        except KeyError:  # the Engine.IO session is already gone
            transport = None
        return {"sid": sid, "eio_sid": sio.manager.eio_sid_from_sid(sid, "/"), "transport": transport}

    @sio.event
    async def connect(sid, environ, auth=None):
        record("connect", **facts(sid))

    @sio.event
    async def disconnect(sid, reason=None):
        record("disconnect", **facts(sid), reason=str(reason))

    @sio.event
    async def whoami(sid):
        f = facts(sid)
        record("event", event="whoami", **f)
        return {"server": name, "sid": sid, "transport": f["transport"]}

    @sio.event
    async def echo(sid, data):
        f = facts(sid)
        record("event", event="echo", **f)
        return {"server": name, "data": data, "transport": f["transport"]}

    @sio.event
    async def shout(sid, data):
        record("event", event="shout", **facts(sid))
        await sio.emit("broadcast", {"from": name, "data": data})
        return {"server": name}

    return sio


def make_app(sio: socketio.AsyncServer, record: Recorder) -> web.Application:
    @web.middleware
    async def engineio_requests(request: web.Request, handler):
        """Record every Engine.IO request with its sid and status, and the sids handed out."""
        transport = request.query.get("transport")
        sid = request.query.get("sid")
        resp = await handler(request)
        record("http", method=request.method, transport=transport, sid=sid, status=resp.status,
               cookies=sorted(request.cookies))
        body = getattr(resp, "body", None)
        if sid is None and isinstance(body, bytes):
            m = OPEN_SID.match(body)
            if m:
                record("open", sid=m.group(1).decode(), transport=transport)
        return resp

    app = web.Application(middlewares=[engineio_requests])
    sio.attach(app)
    return app


async def wait_subscribed(sio: socketio.AsyncServer, timeout: float = 10.0) -> None:
    """Start the manager's Redis listener now and wait until it has subscribed.

    The server would start it on its first request, so a broadcast sent by another member
    right after this member's first client connected could be missed. The test also waits
    for ``PUBSUB NUMSUB socketio`` to count every member before it sends broadcasts.
    """
    sio.manager_initialized = True  # what AsyncServer checks before its own initialize()
    sio.manager.initialize()  # starts the listener task, which connects and subscribes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (sio.manager.pubsub is not None and sio.manager.pubsub.subscribed):
        if loop.time() >= deadline:
            raise RuntimeError(f"not subscribed to redis channel {sio.manager.channel!r} within {timeout}s")
        await asyncio.sleep(0.02)


async def amain(args) -> None:
    record = Recorder(args.name, args.record)
    sio = make_server(args.name, args.redis, record, ping_interval=args.ping_interval,
                      ping_timeout=args.ping_timeout, cookie=args.cookie)
    runner = web.AppRunner(make_app(sio, record), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    await wait_subscribed(sio)
    print(f"READY {port}", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    await runner.cleanup()


if __name__ == "__main__":
    main()
