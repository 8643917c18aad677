"""TlsAccept: the sink of a client connection on a TLS listener until its handshake is done.

The listening socket is plain; TLS starts per connection, here: when the client's first
bytes arrive, the TCP transport gets an SSL protocol (the event loop's own, uvloop's or
asyncio's: the class ``loop.start_tls`` and ``create_server(ssl=...)`` use) with the
generation's Terminator (wsproxy/tls.py), and those bytes. This uses the SSL protocol's
constructor and ``_get_app_transport()`` directly, as ``start_tls`` does, because
``start_tls`` is a coroutine (a Task per connection) and cannot be handed bytes already read.
Doing it per connection rather than with ``create_server(ssl=...)`` means:

- a reload's new certificates (a new generation's Terminator) serve the next handshake
  with the same listening socket, and the handshake timeout is the generation's too;
- a failed or timed-out handshake is seen here, logged (INFO: one line per client, so a
  scan does not flood warnings) and counted as ``rejected(listener, "tls_handshake")``,
  where ``create_server(ssl=...)`` drops it without a word to the application;
- a connection closed before its first byte (a balancer's TCP check) is not a failure;
- a PROXY header (``accept_proxy``) comes first in plain text, as front balancers send it,
  and the bytes that followed it in the same read are fed to the handshake.

``handshake_timeout`` counts from the accept (first byte included). Once the handshake is
done the Endpoint's transport becomes the TLS one, and the session (HTTP or tcp) starts as
on a plain listener. Until then this object sits in the generation's sessions, so a stop
aborts it (``shutdown``) and a reload lets it finish on the generation that accepted it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from wsproxy.logs import event

try:
    from uvloop import Loop as _UvLoop
    from uvloop.loop import SSLProtocol as _UvSSLProtocol
except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop is the fallback
    _UvLoop = _UvSSLProtocol = None
from asyncio.sslproto import SSLProtocol as _AsyncioSSLProtocol


def _ssl_protocol(loop, app_protocol, context, waiter, timeout: float):
    """The loop's server-side SSL protocol around ``app_protocol`` (what start_tls builds)."""
    cls = _UvSSLProtocol if _UvLoop is not None and isinstance(loop, _UvLoop) else _AsyncioSSLProtocol
    return cls(loop, app_protocol, context, waiter, server_side=True, call_connection_made=False,
               ssl_handshake_timeout=timeout)


def _feed(protocol, data: bytes) -> None:
    """Hand ``data`` (read before TLS began) to a buffered protocol, as the transport would."""
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def _why(exc: BaseException | None, timeout: float) -> str:
    if exc is None or isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "closed by the client"
    if isinstance(exc, ConnectionAbortedError):  # the SSL protocol's handshake timeout
        return "no handshake within %gs" % timeout
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) or exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


class TlsAccept:
    """Runs one client's TLS handshake, then starts ``make_session(ctx, endpoint)``.

    TLS begins with the client's first bytes: a connection closed before sending any (a
    balancer's TCP check, a port probe) is no failed handshake, only a DEBUG line. The
    handshake timeout counts from the accept."""

    __slots__ = ("ctx", "ep", "make_session", "protocol", "app_transport", "task", "done", "deadline", "timer",
                 "waiter", "early", "early_eof")

    def __init__(self, ctx, endpoint, make_session) -> None:
        self.ctx = ctx
        self.ep = endpoint
        self.make_session = make_session
        self.protocol = None  # the SSL protocol, once the first bytes came
        self.app_transport = None
        self.task = None  # App.stop compatibility: nothing to await
        self.done = False
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future | None = None  # the handshake's
        self.early = bytearray()  # decrypted bytes that came before the session (asyncio's loop)
        self.early_eof = False

    def start(self) -> None:
        loop = self.ctx.state.loop or asyncio.get_running_loop()
        timeout = self.ctx.tls.handshake_timeout
        self.deadline = loop.time() + timeout
        self.timer = loop.call_later(timeout, self._timeout)
        self.ctx.state.sessions.add(self)

    def _begin(self, first: bytes) -> None:
        """The first bytes arrived: the SSL protocol takes the connection over."""
        self.timer.cancel()
        ep = self.ep
        transport = ep.transport
        terminator = self.ctx.tls
        loop = self.ctx.state.loop or asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        left = max(0.001, self.deadline - loop.time())
        protocol = self.protocol = _ssl_protocol(loop, ep, terminator.context, waiter, left)
        # As start_tls does, but at once: no byte can reach the Endpoint in between.
        transport.pause_reading()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self.app_transport = protocol._get_app_transport()
        waiter.add_done_callback(self._handshake_done)
        _feed(protocol, first)
        transport.resume_reading()

    def _handshake_done(self, waiter: asyncio.Future) -> None:
        if self.done:  # shut down meanwhile
            return
        self._finish()
        exc = None if waiter.cancelled() else waiter.exception()
        transport = self.app_transport
        if exc is not None or transport.is_closing():  # a close during the handshake ends it "successfully"
            self._failed(_why(exc, self.ctx.tls.handshake_timeout))
            return
        ep = self.ep
        ep.transport = transport
        session = self.make_session(self.ctx, ep)
        ep.sink = session
        session.start()
        if self.early:
            data, self.early = bytes(self.early), bytearray()
            session.on_data(ep, data)
        if self.early_eof and ep.sink is session:
            session.on_eof(ep)

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.ctx.state.sessions.discard(self)

    def _timeout(self) -> None:
        if not self.done and self.protocol is None:
            self._finish()
            self._failed("no handshake within %gs (no byte received)" % self.ctx.tls.handshake_timeout)

    def _failed(self, reason: str) -> None:
        ep = self.ep
        ep.abort()  # the TCP transport: closed already, unless the handshake failed on our side
        self._tell_lost()
        ctx = self.ctx
        event(logging.INFO, "TLS handshake failed", listener=ctx.config.name, client=ep.address, reason=reason)
        metrics = ctx.state.metrics
        if metrics is not None:
            metrics.rejected(ctx.config.name, "tls_handshake")

    def _closed_quietly(self) -> None:
        self._finish()
        event(logging.DEBUG, "closed before a TLS handshake", listener=self.ctx.config.name, client=self.ep.address)
        self.ep.close()

    # -- sink: the plain connection until its first bytes (or the tail of a PROXY header's read)
    def on_data(self, ep, data) -> None:
        if self.done:
            return
        if self.protocol is None:
            self._begin(data)
        else:
            # Once the SSL protocol has the transport, what reaches the Endpoint is already
            # decrypted: the client's first request, sent with its Finished. asyncio's SSL
            # protocol delivers it before the handshake waiter's callback runs (uvloop after):
            # keep it for the session.
            self.early += data

    def on_eof(self, ep) -> bool:
        if not self.done:
            if self.protocol is not None and self.waiter is not None and self.waiter.done():
                self.early_eof = True  # after the handshake: the session hears of it
            else:
                self._closed_quietly()
        return False

    def on_lost(self, ep, exc) -> None:
        if not self.done and self.protocol is None:
            self._finish()  # reset before a byte: nothing to log

    def on_pause_writing(self, ep) -> None:
        pass

    def on_resume_writing(self, ep) -> None:
        pass

    # -- App.stop ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        if not self.done:
            self._finish()
            self.ep.abort()
            self._tell_lost()

    def _tell_lost(self) -> None:
        """Once the SSL protocol has the transport, the Endpoint hears of a loss during the
        handshake only sometimes (after a TLS error, not after a timeout or a reset): tell it
        here (a second call is harmless: the sink is still this object)."""
        if self.protocol is not None:
            self.ep.connection_lost(None)


def tls_first(make_session):
    """``make_session`` behind a TLS handshake: what a TLS listener's connections start with."""
    def make(ctx, endpoint):
        return TlsAccept(ctx, endpoint, make_session)
    return make
