"""Endpoint: one TCP connection (client or member side) and the sink that handles it.

An Endpoint is a thin asyncio Protocol. It owns the transport and forwards every event to
its current *sink*, an object that changes as the connection moves through its life:
the HTTP session reading requests, an HTTP exchange reading a response, the WebSocket
relay, or the idle-connection pool. Sinks implement::

    on_data(ep, data)          bytes arrived
    on_eof(ep) -> bool         the peer half-closed; True keeps the transport open for writing
    on_lost(ep, exc)           the connection is gone (exc is None on a clean close)
    on_pause_writing(ep)       our writes to ep are piling up: pause whoever feeds them
    on_resume_writing(ep)

Reading is paused by *reason* (a small set), so two reasons to pause never undo each
other: the transport reads again only when every reason is gone.
"""

from __future__ import annotations

import asyncio


class Endpoint(asyncio.Protocol):
    __slots__ = ("transport", "sink", "peer", "real_peer", "_local", "closed", "lingering", "_pause_reasons")

    def __init__(self, sink=None) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink = sink
        # The client address everything else uses (X-Forwarded-For, logs, source_ip hashing):
        # the TCP peer, or the address a trusted PROXY header announced (proxy_accept.py).
        self.peer: tuple[str, int] | None = None
        self.real_peer: tuple[str, int] | None = None  # always the TCP peer
        # Our own address on this connection (the address the client connected to), or
        # the destination a trusted PROXY header announced; the ``dst`` of PROXY headers we send.
        self._local: tuple[str, int] | None = None
        self.closed = False  # close()/abort() called or connection lost
        self.lingering = False  # linger_close() called: close() waits for the peer
        # A set only while paused (None otherwise): an idle connection should not carry one.
        self._pause_reasons: set[str] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = self.real_peer = (peer[0], peer[1]) if peer else ("-", 0)

    @property
    def local(self) -> tuple[str, int] | None:
        """Our address on this connection (or the one a trusted PROXY header announced).
        Read on demand: most connections never need it, and an idle one should not pay for it."""
        if self._local is None and self.transport is not None:
            local = self.transport.get_extra_info("sockname")
            if isinstance(local, tuple) and len(local) >= 2:
                self._local = (local[0], local[1])
        return self._local

    @local.setter
    def local(self, value: tuple[str, int] | None) -> None:
        self._local = value

    def data_received(self, data: bytes) -> None:
        self.sink.on_data(self, data)

    def eof_received(self) -> bool:
        keep_open = self.sink.on_eof(self)
        # A TLS transport cannot stay half-open, and uvloop logs a warning each time it is
        # asked to (any client could flood the log with close_notify): never ask it.
        return bool(keep_open) and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.sink is not None:
            self.sink.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.sink.on_pause_writing(self)

    def resume_writing(self) -> None:
        self.sink.on_resume_writing(self)

    # -- helpers ---------------------------------------------------------------------
    @property
    def address(self) -> str:
        host, port = self.peer or ("-", 0)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def write(self, data) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_reading(self, reason: str) -> None:
        reasons = self._pause_reasons
        if reasons is None:
            if not self.closed:
                self.transport.pause_reading()
            self._pause_reasons = {reason}
        else:
            reasons.add(reason)

    def resume_reading(self, reason: str) -> None:
        reasons = self._pause_reasons
        if reasons is not None and reason in reasons:
            reasons.discard(reason)
            if not reasons:
                self._pause_reasons = None
                if not self.closed:
                    self.transport.resume_reading()

    def resume_all_reading(self) -> None:
        if self._pause_reasons is not None:
            self._pause_reasons = None
            if not self.closed:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close after the write buffer is flushed."""
        if not self.closed and not self.lingering:
            self.closed = True
            self.transport.close()

    def linger_close(self, timeout: float = 2.0) -> None:
        """Close politely after an error answer: FIN now, discard what the peer still sends,
        close when it closes (or after ``timeout``). Closing with unread data would make the
        kernel send a reset, which can destroy the answer before the client reads it."""
        if self.closed or self.lingering:
            return
        transport = self.transport
        if not transport.can_write_eof():
            self.close()
            return
        self.lingering = True
        self.sink = LINGER
        self.resume_all_reading()
        transport.write_eof()
        asyncio.get_running_loop().call_later(timeout, self.abort)

    def abort(self) -> None:
        """Close now, dropping anything unsent (a reset)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()



class Discard:
    """The sink of a connection nobody owns any more: anything that arrives closes it."""

    def on_data(self, ep: Endpoint, data) -> None:
        ep.abort()

    def on_eof(self, ep: Endpoint) -> bool:
        ep.close()
        return False

    def on_lost(self, ep: Endpoint, exc) -> None:
        pass

    def on_pause_writing(self, ep: Endpoint) -> None:
        pass

    def on_resume_writing(self, ep: Endpoint) -> None:
        pass


class Linger(Discard):
    """The sink of a connection being closed politely: drop input, close on EOF."""

    def on_data(self, ep: Endpoint, data) -> None:
        pass

    def on_eof(self, ep: Endpoint) -> bool:
        ep.lingering = False
        ep.close()
        return False


DISCARD = Discard()
LINGER = Linger()
