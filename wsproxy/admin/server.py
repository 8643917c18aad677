"""AdminServer: a small HTTP/1.1 server for the admin API, on asyncio streams.

Requests are parsed by the proxy's own strict parser (``protocol.http1.RequestParser``,
llhttp underneath), so the admin port refuses the same malformed requests the listeners
do (400, 414, 431). Bodies are Content-Length or chunked, at most ``MAX_BODY`` bytes (413).
Keep-alive is supported; a connection idle for ``IDLE_TIMEOUT`` or a request not complete
within ``REQUEST_TIMEOUT`` is closed. One request at a time per connection, answered in
order; the API's work is a few table reads, so nothing here needs to be concurrent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus

from wsproxy.admin.routes import AdminApi, Response, error
from wsproxy.errors import HttpError
from wsproxy.logs import event
from wsproxy.protocol import http1

MAX_BODY = 64 * 1024
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
IDLE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0


class _Closed(Exception):
    """The client went away (or stopped mid-request): nothing to answer."""


class AdminServer:
    def __init__(self, bind, control, metrics=None) -> None:
        self.bind = bind  # config.schema.Address
        self.api = AdminApi(control, metrics)
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None  # the bound port (bind.port 0 picks a free one)

    async def start(self) -> None:
        host = self.bind.host
        self.server = await asyncio.start_server(
            self._connection, host, self.bind.port, reuse_address=True,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.server.sockets[0].getsockname()[1]
        event(logging.DEBUG, "admin API bound", bind=str(self.bind), port=self.port)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        try:
            await asyncio.wait_for(self.server.wait_closed(), 2.0)
        except TimeoutError:
            pass
        self.server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        parser = http1.RequestParser(max_head_bytes=16 * 1024, max_headers=100, max_uri_bytes=8 * 1024)
        events: list = []
        try:
            while True:
                try:
                    request = await self._read_request(reader, parser, events)
                except HttpError as exc:
                    writer.write(_encode(error(exc.status, exc.reason), keep_alive=False))
                    break
                if request is None:
                    break
                head, body = request
                refused = self._cross_site(head)
                if refused is not None:
                    event(logging.WARNING, "admin request refused", method=head.method, path=head.target,
                          reason=refused)
                    response = error(403, refused)
                else:
                    response = await self.api.handle(head.method, head.target, body)
                keep = head.keep_alive and not head.is_upgrade and self.server is not None
                writer.write(_encode(response, keep_alive=keep, head_only=head.method == "HEAD"))
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)  # a client that never reads goes
                if not keep:
                    break
        except (_Closed, ConnectionError, TimeoutError):
            pass
        except Exception:  # pragma: no cover - never let a bug kill the server's accept loop
            logging.getLogger("wsproxy").exception("admin connection failed")
        finally:
            self.writers.discard(writer)
            writer.close()

    def _cross_site(self, head) -> str | None:
        """Why a request that a web page could have made is refused, or None.

        Binding to loopback keeps other hosts out, not the operator's own browser: any page
        it visits may POST to 127.0.0.1:9901 (CSRF), or reach it under its own name by DNS
        rebinding. So the Host must name this server (loopback names, or the bind address;
        any host when bound to a wildcard address), and a POST carrying an Origin must come
        from this same origin (the stats page does; `wsproxy ctl` and curl send none)."""
        host = (head.get("host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        wildcard = self.bind.host in ("0.0.0.0", "::", "")
        if not wildcard and name not in _LOOPBACK_NAMES and name.strip("[]") != self.bind.host.lower():
            return f"Host {host!r} does not name this admin server"
        origin = head.get("origin")
        if head.method == "POST" and origin is not None:
            if origin.lower().split("://", 1)[-1].rstrip("/") != host:
                return f"cross-site request from Origin {origin!r}"
        return None

    async def _read_request(self, reader, parser, events: list):
        """The next (RequestHead, body), or None when the client closed between requests."""
        head = None
        body = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDLE_TIMEOUT
        while True:
            while events:
                ev = events.pop(0)
                if isinstance(ev, http1.RequestHead):
                    head = ev
                    deadline = loop.time() + REQUEST_TIMEOUT
                    if (ev.content_length or 0) > MAX_BODY:
                        raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
                elif isinstance(ev, http1.Body):
                    body += ev.data
                    if len(body) > MAX_BODY:
                        raise HttpError(413, f"the body is larger than {MAX_BODY} bytes")
                elif isinstance(ev, http1.EndOfMessage) and head is not None:
                    return head, bytes(body)
            if head is None and parser.in_head:
                deadline = min(deadline, loop.time() + REQUEST_TIMEOUT)
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(65536)
            except TimeoutError:
                if head is None and not parser.in_head:
                    return None  # idle keep-alive connection: close quietly
                raise HttpError(408, "the request was not complete in time") from None
            if not data:
                if head is None and not parser.in_head:
                    return None
                raise _Closed()
            events.extend(parser.feed(data))


def _encode(response: Response, *, keep_alive: bool, head_only: bool = False) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
               ("Cache-Control", "no-store"), *response.headers]
    if not keep_alive:
        headers.append(("Connection", "close"))
    head = http1.serialize_response_head(response.status, reason, headers)
    return head if head_only else head + response.body
