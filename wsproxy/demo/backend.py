"""A tiny HTTP/1.1 + WebSocket chat server: one demo member behind wsproxy.

Stdlib asyncio streams plus wsproxy's own sans-I/O frame parser; no third-party web library.

    GET /         the chat page (static/index.html)
    GET /whoami   {"member": name}
    GET /healthz  200 "ok"
    GET /ws       WebSocket: a welcome message on open, then every text message a client
                  sends is broadcast to every client of THIS member (members do not share).

Plain responses close the connection (no keep-alive). Not a production server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import weakref
from importlib import resources

from wsproxy.errors import FrameError
from wsproxy.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    build_close,
    build_frame,
)
from wsproxy.protocol.handshake import accept_key

MAX_HEAD = 16 * 1024          # request head limit
MAX_MESSAGE = 64 * 1024       # chat messages are small
MAX_BUFFERED = 1024 * 1024    # a client this far behind on broadcasts is dropped
HEAD_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0           # how long to wait for the peer's Close after ours

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            426: "Upgrade Required", 431: "Request Header Fields Too Large"}


def _page() -> bytes:
    return resources.files("wsproxy.demo").joinpath("static/index.html").read_bytes()


def _response(status: int, body: bytes, ctype: str, headers=(), head_only=False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
             "Cache-Control: no-store", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _text(status: int, text: str, headers=(), head_only=False) -> bytes:
    return _response(status, text.encode() + b"\n", "text/plain; charset=utf-8", headers, head_only)


def _parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """Request line + headers (names lowercased; repeats joined with ", "). ValueError if bad."""
    lines = raw.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise ValueError(f"bad header line {line!r}")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method, target, headers


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


class Client:
    """One open WebSocket on this member."""

    def __init__(self, conn_id: int, writer: asyncio.StreamWriter) -> None:
        self.id = conn_id
        self.writer = writer
        self.close_sent = False

    def send(self, opcode: int, payload: bytes) -> None:
        if self.close_sent or self.writer.is_closing():
            return
        self.writer.write(build_frame(opcode, payload, mask=False))
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.writer.transport.abort()  # too slow to keep up with the room

    def send_json(self, obj: dict) -> None:
        self.send(OP_TEXT, json.dumps(obj).encode())

    def send_close(self, code: int | None, reason: str = "") -> None:
        """Send Close once; code None sends an empty Close (the answer to one without a code)."""
        if not self.close_sent and not self.writer.is_closing():
            if code is None:
                self.writer.write(build_frame(OP_CLOSE, b"", mask=False))
            else:
                self.writer.write(build_close(code, reason, mask=False))
        self.close_sent = True


class Backend:
    """The state of one member: its name and its connected WebSocket clients."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            try:
                method, target, headers = _parse_head(raw[:-4])
            except ValueError:
                writer.write(_text(400, "bad request"))
                return
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                writer.write(_text(405, "GET only", [("Allow", "GET, HEAD")]))
            elif path == "/ws" and method == "GET":
                await self.websocket(reader, writer, headers)
            else:
                writer.write(self.plain(path, head_only=method == "HEAD"))
        except asyncio.LimitOverrunError:
            writer.write(_text(431, "request head too large"))
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.drain(), CLOSE_TIMEOUT)
            writer.close()

    def plain(self, path: str, head_only: bool) -> bytes:
        if path in ("/", "/index.html"):
            return _response(200, _page(), "text/html; charset=utf-8", head_only=head_only)
        if path == "/whoami":
            body = json.dumps({"member": self.name}).encode()
            return _response(200, body, "application/json", head_only=head_only)
        if path == "/healthz":
            return _text(200, "ok", head_only=head_only)
        return _text(404, "not found", head_only=head_only)

    # -- WebSocket ----------------------------------------------------------------------------

    @staticmethod
    def handshake_error(headers: dict[str, str]) -> bytes | None:
        """The error response for a bad upgrade request, or None if it is fine."""
        if "websocket" not in _tokens(headers.get("upgrade")) or "upgrade" not in _tokens(
            headers.get("connection")
        ):
            return _text(426, "this is a WebSocket endpoint", [("Upgrade", "websocket"),
                                                              ("Connection", "Upgrade")])
        if headers.get("sec-websocket-version") != "13":
            return _text(426, "unsupported WebSocket version", [("Sec-WebSocket-Version", "13")])
        try:
            if len(base64.b64decode(headers.get("sec-websocket-key", ""), validate=True)) != 16:
                raise ValueError
        except (ValueError, binascii.Error):
            return _text(400, "bad Sec-WebSocket-Key")
        return None

    async def websocket(self, reader, writer, headers: dict[str, str]) -> None:
        error = self.handshake_error(headers)
        if error:
            writer.write(error)
            return
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: "
                      f"{accept_key(headers['sec-websocket-key'])}\r\n\r\n").encode())
        client = Client(next(self._ids), writer)
        self.clients[client.id] = client
        client.send_json({"type": "welcome", "member": self.name, "conn": client.id,
                          "clients": len(self.clients)})
        self.presence()
        try:
            await self.session(reader, client)
        finally:
            del self.clients[client.id]
            self.presence()

    async def session(self, reader: asyncio.StreamReader, client: Client) -> None:
        """Read frames until Close or EOF. Fragmented text is reassembled."""
        frames = FrameReader(masked=True, max_size=MAX_MESSAGE)
        message: bytes | None = None  # the text message being reassembled
        while True:
            data = await (asyncio.wait_for(reader.read(65536), CLOSE_TIMEOUT)
                          if client.close_sent else reader.read(65536))
            if not data:
                return  # client vanished (or closed TCP after the Close handshake)
            try:
                for frame in frames.feed(data):
                    if frame.opcode == OP_PING:
                        client.send(OP_PONG, frame.payload)
                    elif frame.opcode == OP_CLOSE:
                        # echo the code; a Close without one is answered with an empty Close
                        code = int.from_bytes(frame.payload[:2], "big") if frame.payload else None
                        client.send_close(code)
                        return
                    elif frame.opcode == OP_PONG:
                        pass
                    elif frame.opcode == OP_BINARY or (frame.opcode == OP_CONT and message is None):
                        raise FrameError(1003, "text messages only")
                    else:  # OP_TEXT or a continuation of one
                        message = (message or b"") + frame.payload
                        if len(message) > MAX_MESSAGE:
                            raise FrameError(1009, "message too big")
                        if frame.fin:
                            self.chat(client, message)
                            message = None
            except FrameError as exc:
                client.send_close(exc.close_code, exc.reason[:100])
                return

    def chat(self, sender: Client, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(1007, "invalid UTF-8") from None
        self.broadcast({"type": "chat", "member": self.name, "text": text, "from": sender.id})

    def presence(self) -> None:
        self.broadcast({"type": "presence", "member": self.name, "clients": len(self.clients)})

    def broadcast(self, obj: dict) -> None:
        for client in list(self.clients.values()):
            client.send_json(obj)

    async def close_all(self, code: int = 1001, reason: str = "member shutting down") -> None:
        """Send Close to every client and give them CLOSE_TIMEOUT to answer."""
        for client in list(self.clients.values()):
            client.send_close(code, reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for client in list(self.clients.values()):
            client.writer.transport.abort()


_BACKENDS: weakref.WeakKeyDictionary[asyncio.AbstractServer, Backend] = weakref.WeakKeyDictionary()


async def serve_backend(host: str, port: int, name: str) -> asyncio.AbstractServer:
    """Start one demo member listening on host:port (port 0 = any free port)."""
    backend = Backend(name)
    server = await asyncio.start_server(backend.handle, host, port, limit=MAX_HEAD)
    _BACKENDS[server] = backend
    return server


def backend_of(server: asyncio.AbstractServer) -> Backend:
    """The Backend state behind a server returned by serve_backend (clients, name)."""
    return _BACKENDS[server]


async def stop_backend(server: asyncio.AbstractServer, code: int = 1001) -> None:
    """Stop accepting, Close every WebSocket with `code`, then drop what is left."""
    server.close()
    await backend_of(server).close_all(code)
    await server.wait_closed()
