"""ProxyAccept: the first sink of a client connection on an ``accept_proxy`` listener.

A front balancer (HAProxy, an AWS NLB, ...) that relays connections at layer 4 writes a
PROXY header (v1 or v2, detected from the first bytes) before the client's own bytes,
saying who the client is. Only peers in the listener's ``trusted_proxies`` may do that:

- a trusted peer must send a complete, valid header within ``head_timeout``; a malformed or
  missing one is logged and the connection closed. The header's source address replaces
  the client address everywhere (X-Forwarded-For, the access log, source_ip hashing):
  ``endpoint.peer`` becomes it, ``endpoint.real_peer`` keeps the TCP peer. A v2 ``LOCAL``
  or a v1 ``UNKNOWN`` header (the balancer's health checks) keeps the real peer. The header's
  client is the one ``max_conns_per_ip`` counts. Then the session (HTTP or tcp) starts and
  gets the bytes that followed the header.
- anyone else is served as a direct client, and its session starts at once (a tcp
  protocol where the server speaks first must not wait). Its first bytes are held only
  while they could still be the start of a PROXY header (at most 11 bytes); if they are
  one, the peer is trying to forge its address: logged and closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from wsproxy.logs import event
from wsproxy.protocol.proxy_header import ProxyHeaderError, ProxyHeaderReader, looks_like_proxy_header
from wsproxy.proxy.limits import client_key, refused_connection


def _unmapped(ip: str) -> str:
    """``::ffff:203.0.113.7`` (a dual-stack balancer's view of an IPv4 client) -> ``203.0.113.7``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else ip


class ProxyAccept:
    """Sink of a client endpoint until its PROXY header is read (trusted peer) or ruled
    out (anyone else). ``make_session(ctx, endpoint)`` builds the session to hand over to
    (``ClientSession`` or ``TcpSession``: ``start()``, sink methods, optional ``refuse(reason)``).

    While a trusted peer's header is awaited it sits in ``state.sessions`` with ``task``
    None, ``ep`` and ``shutdown()``, so App.stop closes it like any session.
    """

    __slots__ = ("ctx", "ep", "make_session", "trusted", "session", "reader", "held", "timer", "task", "done")

    def __init__(self, ctx, endpoint, make_session) -> None:
        self.ctx = ctx
        self.ep = endpoint
        self.make_session = make_session
        self.trusted = ctx.trusted.contains(endpoint.peer[0])
        self.session = None
        self.reader = ProxyHeaderReader() if self.trusted else None
        self.held = bytearray()  # untrusted peer: first bytes, while they might be a header
        self.timer: asyncio.TimerHandle | None = None
        self.task = None  # App.stop compatibility
        self.done = False  # handed over, or closed

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.ctx.config.head_timeout, self._timeout)
        if self.trusted:
            self.ctx.state.sessions.add(self)
        else:
            self.session = self.make_session(self.ctx, self.ep)
            self.session.start()

    # -- the outcomes ----------------------------------------------------------------------
    def _accepted(self, info) -> None:
        ep = self.ep
        self._finish()
        if info.source is not None:
            ep.peer = (_unmapped(info.source[0]), info.source[1])
            ep.local = (_unmapped(info.dest[0]), info.dest[1])
            if not self._count_client(ep):
                return
        event(logging.DEBUG, "PROXY header accepted", listener=self.ctx.config.name,
              peer=_fmt(ep.real_peer), client=ep.address, version=info.version, command=info.command,
              family=info.family)
        self.session = session = self.make_session(self.ctx, ep)
        ep.sink = session
        session.start()
        leftover = self.reader.leftover
        if leftover and not ep.closed:
            session.on_data(ep, leftover)

    def _count_client(self, ep) -> bool:
        """max_conns_per_ip counts the client the header names (the balancer itself was not
        counted per IP at accept: app.py); False when that client is over it (closed)."""
        limits = getattr(ep, "limits", None)
        if limits is None:
            return True
        key = client_key(ep.peer[0])
        refused = limits.open_ip(key)
        if refused is not None:
            refused_connection(self.ctx, limits, refused, ep.address)
            ep.abort()
            return False
        ep.limit_key = key
        return True

    def _reject(self, reason: str) -> None:
        """Log, then close the connection (and end the session of an untrusted peer)."""
        self._finish()
        event(logging.WARNING, "PROXY header rejected", listener=self.ctx.config.name,
              client=_fmt(self.ep.real_peer), trusted=self.trusted, reason=reason)
        refuse = getattr(self.session, "refuse", None)
        if refuse is not None:
            refuse(reason)
        else:
            self.ep.close()

    def _pass_through(self) -> None:
        """Untrusted peer, no PROXY header: its session reads from now on."""
        self._finish()
        self.ep.sink = self.session
        if self.held:
            data, self.held = bytes(self.held), bytearray()
            self.session.on_data(self.ep, data)

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ctx.state.sessions.discard(self)

    def _timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.trusted:
            got = self.reader.buffered
            self._reject("no complete PROXY header within %gs (%d bytes received)"
                         % (self.ctx.config.head_timeout, got))
        else:
            self._pass_through()  # a few bytes that merely start like a header: the client's

    # -- sink ---------------------------------------------------------------------------------
    def on_data(self, ep, data) -> None:
        if self.done:
            return  # closed after a rejection: drop what was still in flight
        if self.trusted:
            try:
                info = self.reader.feed(data)
            except ProxyHeaderError as exc:
                self._reject(exc.reason)
                return
            if info is not None:
                self._accepted(info)
            return
        self.held += data
        verdict = looks_like_proxy_header(self.held)
        if verdict is True:
            self._reject("PROXY header from %s, which is not in trusted_proxies" % ep.real_peer[0])
        elif verdict is False:
            self._pass_through()

    def on_eof(self, ep) -> bool:
        if self.done:
            return False
        if self.trusted:
            got = self.reader.buffered
            self._finish()
            if got:
                self._reject("connection closed after %d bytes of an incomplete PROXY header" % got)
            else:  # connect-and-close: a balancer's TCP health check
                event(logging.DEBUG, "closed before a PROXY header", listener=self.ctx.config.name,
                      client=_fmt(ep.real_peer))
                ep.close()
            return False
        self._pass_through()
        return self.session.on_eof(ep)

    def on_lost(self, ep, exc) -> None:
        self._finish()
        if self.session is not None:
            self.session.on_lost(ep, exc)

    def on_pause_writing(self, ep) -> None:
        if self.session is not None:
            self.session.on_pause_writing(ep)

    def on_resume_writing(self, ep) -> None:
        if self.session is not None:
            self.session.on_resume_writing(ep)

    # -- App.stop ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        if not self.done:
            self._finish()
            self.ep.close()


def _fmt(peer) -> str:
    host, port = peer or ("-", 0)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
