"""TcpSession: a layer-4 (``mode = "tcp"``) connection relayed to a pool member.

Bytes pass both ways untouched, with backpressure: a side whose writes pile up pauses the
reading of the other side. The member is chosen and connected like an HTTP request's
(``connect_to_pool``: balancer, max_conns and its queue, connect timeout, retries on
another member), with a PROXY header written first when the listener or pool asks for one.

How a connection ends, per direction (HAProxy's behaviour for ``mode tcp``):
- a FIN (clean EOF) from one side becomes a FIN to the other (``write_eof``); the other
  direction keeps flowing (half-close). Both directions finished -> both are closed;
- a connection lost with an error (ECONNRESET, EPIPE, ...) resets the other side: it is
  aborted with SO_LINGER 0, so its peer sees an RST, not a clean end of stream;
- one side closed cleanly without a FIN first (only after we closed it): the other is
  closed politely (its pending writes flushed, then FIN);
- no byte either way for the listener's ``idle_timeout``: both are closed (log line);
- no member (all down or full, the queue timed out) or every connect failed: the client
  is closed (log line).
A side the proxy closes is aborted if it has not finished closing ``LINGER`` seconds later
(its peer stopped reading, so the pending writes would never drain).

One access-log record (``kind = "tcp"``) is written when both connections are gone:
``closed_by`` is the side whose reset, or the proxy whose timeout, refusal or shutdown,
ended it; for a clean end, the side that half-closed first. ``reason`` is null for a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

from wsproxy.balancing.keys import request_key
from wsproxy.config.schema import effective_proxy_protocol
from wsproxy.errors import UpstreamError
from wsproxy.logs import access, event
from wsproxy.protocol import proxy_header
from wsproxy.proxy.endpoint import DISCARD
from wsproxy.proxy.upstream import connect_to_pool

LINGER = 2.0  # seconds a closed side may take to flush and finish before it is aborted
PENDING_LIMIT = 256 * 1024  # client bytes held while the member connection is being made
CLIENT = "client"
MEMBER = "member"
PROXY = "proxy"
_PEER = "peer"  # pause reason: the other side's writes pile up
_CONNECT = "connect"  # pause reason: too many bytes held before the member is connected
_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# A member may speak first (SMTP, MySQL, SSH banners): its bytes can arrive between the
# connect and the moment this session takes the endpoint over, so the endpoint is created
# with a _Hold sink that keeps them (the default DISCARD sink would drop the connection).


def reset(ep) -> None:
    """Abort ``ep`` so that its peer sees a reset (RST), not a FIN."""
    if ep.transport is None:
        return
    sock = ep.transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
        except (OSError, AttributeError, ValueError):
            pass  # already closed, or not a socket: a plain abort is all we can do
    ep.abort()


class _Hold:
    """Sink of a member connection being made: keeps its events until the session takes it.

    Several endpoints may pass through it (a connect that completes as its timeout fires is
    closed by asyncio), so events are kept per endpoint and only the chosen one's replayed.
    """

    __slots__ = ("events", "size")

    def __init__(self) -> None:
        self.events: list = []  # (endpoint, kind, payload): "data" bytes, "eof", "lost" exc
        self.size = 0

    def on_data(self, ep, data) -> None:
        self.events.append((ep, "data", bytes(data)))
        self.size += len(data)
        if self.size > PENDING_LIMIT:
            ep.pause_reading(_CONNECT)

    def on_eof(self, ep) -> bool:
        self.events.append((ep, "eof", None))
        return True

    def on_lost(self, ep, exc) -> None:
        self.events.append((ep, "lost", exc))

    def on_pause_writing(self, ep) -> None:
        pass

    def on_resume_writing(self, ep) -> None:
        pass


class TcpSession:
    """One client connection on a tcp listener and its member connection.

    Compatible with ``App.stop``: ``task``, ``ep`` (the client endpoint) and ``shutdown()``.
    The client endpoint's sink must be this session (or a filter in front of it that
    forwards every event, like ``proxy_accept.ProxyAccept``).
    """

    def __init__(self, ctx, endpoint) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.ep = endpoint  # the client
        self.pool = ctx.pools[self.cfg.pool]
        self.loop = asyncio.get_running_loop()
        self.member = None  # the member Endpoint once connected
        self.up = None  # the Upstream (for release)
        self.member_addr: str | None = None
        self.pending = bytearray()  # client bytes received before the member was connected
        self.eof_from: set = set()  # endpoints whose peer sent FIN
        self.gone: set = set()  # endpoints whose connection is lost
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.closed_by: str | None = None  # who ended it abnormally first (reset, idle, ...)
        self.reason: str | None = None
        self.first_fin: str | None = None  # who half-closed first (the closer of a clean end)
        self.closing = False  # both sides are being closed
        self.started = time.monotonic()
        self.last_activity = self.loop.time()
        self.idle_handle: asyncio.TimerHandle | None = None
        self.linger_handle: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Task | None = None
        self.hold = _Hold()  # the member endpoint's sink until _relay
        self.done = self.loop.create_future()
        self.task: asyncio.Task | None = None
        self.client_ip = endpoint.peer[0]
        self.logged = False
        self.metrics_token = None  # node/metrics.py: set by start() when metrics are on

    # -- life ---------------------------------------------------------------------------
    def start(self) -> None:
        self.ctx.state.sessions.add(self)
        metrics = self.ctx.state.metrics
        if metrics is not None:
            self.metrics_token = metrics.connection_opened(self.cfg.name)
        self.task = self.loop.create_task(self.run())

    async def run(self) -> None:
        try:
            if await self._connect():
                self._relay()
                await self.done
        except asyncio.CancelledError:
            self._ended(PROXY, "cancelled (shutdown)")
        except Exception:
            logging.getLogger("wsproxy").exception("tcp session failed: client %s", self.ep.address)
            self._ended(PROXY, "internal error")
        finally:
            self._cleanup()

    async def _connect(self) -> bool:
        """Connect to a member; False when the client was closed instead (logged)."""
        pool, cfg = self.pool, self.pool.config
        key = request_key(cfg.hash_key, client_ip=self.client_ip)
        header = None
        version = effective_proxy_protocol(self.cfg, cfg)
        if version is not None:
            header = proxy_header.build(version, self.ep.peer, self.ep.local)
        self.connecting = self.loop.create_task(
            connect_to_pool(pool, None, reuse=False, key=key, proxy_header=header, sink=self.hold))
        try:
            self.up = await self.connecting
        except asyncio.CancelledError:
            if self.connecting.cancelled() and asyncio.current_task().cancelling() == 0:
                # on_lost/refuse/shutdown cancelled the connect (and said why), not App.stop
                self._ended(CLIENT, "client closed before a member was connected")
                self._close_client()
                return False
            raise
        except UpstreamError as exc:
            self._ended(PROXY, exc.reason)
            event(logging.WARNING, "tcp connect failed", client=self.ep.address, listener=self.cfg.name,
                  pool=pool.name, reason=exc.reason)
            self._close_client()
            return False
        finally:
            self.connecting = None
        self.member = self.up.endpoint
        self.member_addr = str(self.up.member.addr)
        if self.metrics_token is not None:
            self.ctx.state.metrics.member_connection(self.pool.name, self.member_addr)
        return True

    def _relay(self) -> None:
        """The member is connected: hand it what the client sent so far, then splice."""
        member, client = self.member, self.ep
        member.sink = self
        early, self.hold = [e for e in self.hold.events if e[0] is member], None
        if client in self.gone or client.closed:  # the client left as the connect completed
            self._ended(CLIENT, "client closed before a member was connected")
            member.close()
            self._arm_linger()
            return
        if self.pending:
            member.write(bytes(self.pending))
            self.pending = bytearray()
        client.resume_reading(_CONNECT)
        if client in self.eof_from:
            self._write_eof(member)
        for _ep, kind, payload in early:  # what the member did before we took it over
            if kind == "data":
                self.on_data(member, payload)
            elif kind == "eof":
                self.on_eof(member)
            else:
                self._lost(member, payload)
        member.resume_reading(_CONNECT)  # (only the _Hold pauses it; a peer pause stays)
        if member.closed and member not in self.gone:  # lost with no sink to tell (DISCARD)
            self._lost(member, None)
        idle = self.cfg.idle_timeout
        if idle and idle > 0 and not self.done.done():
            self.last_activity = self.loop.time()
            self.idle_handle = self.loop.call_at(self.last_activity + idle, self._idle_check)

    def _cleanup(self) -> None:
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        for h in (self.idle_handle, self.linger_handle):
            if h is not None:
                h.cancel()
        for ep in (self.ep, self.member):
            if ep is not None and ep not in self.gone:
                ep.abort()
        if self.member is not None:
            self.member.sink = DISCARD
        if self.up is not None:
            self.pool.release(self.up.member)
            self.up = None
        self._log()
        if self.metrics_token is not None:
            self.ctx.state.metrics.connection_closed(self.metrics_token)
            self.metrics_token = None
        self.ctx.state.sessions.discard(self)

    def _ended(self, by: str, reason: str) -> None:
        """Record who ended the connection, and why: the first abnormal end wins (a FIN is
        not one: after a half-close the other direction may still flow for hours)."""
        if self.closed_by is None:
            self.closed_by = by
            self.reason = reason

    def _log(self) -> None:
        if self.logged:
            return
        self.logged = True
        access({
            "kind": "tcp",
            "client": self.ep.address,
            "listener": self.cfg.name,
            "pool": self.pool.name,
            "member": self.member_addr,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
            "closed_by": self.closed_by or self.first_fin,
            "reason": self.reason,
        })

    # -- sink for both endpoints --------------------------------------------------------
    def on_data(self, ep, data) -> None:
        self.last_activity = self.loop.time()
        if ep is self.ep:
            self.bytes_in += len(data)
            member = self.member
            if member is None:
                self.pending += data
                if len(self.pending) > PENDING_LIMIT:
                    ep.pause_reading(_CONNECT)
            else:
                member.write(data)
        else:
            self.bytes_out += len(data)
            self.ep.write(data)

    def on_eof(self, ep) -> bool:
        """A FIN from ``ep``'s peer: pass it on; the other direction keeps flowing."""
        self.eof_from.add(ep)
        if self.first_fin is None:
            self.first_fin = CLIENT if ep is self.ep else MEMBER
        other = self._other(ep)
        if other is not None:
            self._write_eof(other)
        if self.member is not None and self.ep in self.eof_from and self.member in self.eof_from:
            self._close_both()
        return True  # keep the transport open: the other direction may still be flowing

    def on_lost(self, ep, exc) -> None:
        self._lost(ep, exc)

    def _lost(self, ep, exc) -> None:
        if ep in self.gone:
            return
        self.gone.add(ep)
        side = CLIENT if ep is self.ep else MEMBER
        other = self._other(ep)
        if exc is not None:
            self._ended(side, "%s connection lost: %s" % (side, _describe(exc)))
            if other is not None and other not in self.gone:
                reset(other)  # propagate the reset as a reset
        elif other is not None and other not in self.gone and not other.closed:
            if self.first_fin is None:
                self.first_fin = side
            other.close()  # flush what is buffered, then FIN
            self._arm_linger()
        if ep is self.ep and self.member is None:
            # Still connecting: stop (the member slot or queue place is freed).
            if self.connecting is not None and not self.connecting.done():
                self.connecting.cancel()
            self._ended(CLIENT, "client closed before a member was connected")
        self._maybe_done()

    def on_pause_writing(self, ep) -> None:
        other = self._other(ep)
        if other is not None:
            other.pause_reading(_PEER)

    def on_resume_writing(self, ep) -> None:
        other = self._other(ep)
        if other is not None:
            other.resume_reading(_PEER)

    # -- helpers ------------------------------------------------------------------------
    def _other(self, ep):
        return self.member if ep is self.ep else self.ep

    def _write_eof(self, ep) -> None:
        if ep.closed or ep in self.gone:
            return
        transport = ep.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except (OSError, RuntimeError):
                ep.close()
        else:
            ep.close()

    def _maybe_done(self) -> None:
        # Only the relay waits for this; before it, run() ends the session itself.
        if self.member is not None and self.ep in self.gone and self.member in self.gone \
                and not self.done.done():
            self.done.set_result(None)

    def _close_both(self) -> None:
        self.closing = True
        for ep in (self.ep, self.member):
            if ep is not None and ep not in self.gone:
                ep.close()
        self._arm_linger()

    def _close_client(self) -> None:
        if self.ep not in self.gone:
            self.ep.close()

    def _arm_linger(self) -> None:
        if self.linger_handle is None:
            self.linger_handle = self.loop.call_later(LINGER, self._force_close)

    def _force_close(self) -> None:
        for ep in (self.ep, self.member):
            if ep is not None and ep not in self.gone:
                ep.abort()

    def _idle_check(self) -> None:
        self.idle_handle = None
        if self.done.done() or self.closing:
            return
        idle = self.cfg.idle_timeout
        due = self.last_activity + idle
        if self.loop.time() < due:
            self.idle_handle = self.loop.call_at(due, self._idle_check)
            return
        reason = "idle timeout (%gs without a byte either way)" % idle
        self._ended(PROXY, reason)
        event(logging.INFO, "tcp connection idle: closed", client=self.ep.address, listener=self.cfg.name,
              member=self.member_addr, idle_s=idle)
        self._close_both()

    # -- operator actions ------------------------------------------------------------------
    def refuse(self, reason: str) -> None:
        """Close the client now (e.g. it sent a PROXY header it may not send)."""
        self._ended(PROXY, reason)
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        self._close_both()

    def shutdown(self) -> None:
        """Proxy shutdown: close both sides (pending writes are flushed first)."""
        if self.done.done():
            return
        self._ended(PROXY, "proxy shutting down")
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        self._close_both()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return "%s (%s)" % (exc.__class__.__name__, exc.strerror)
    return exc.__class__.__name__
