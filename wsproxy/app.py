"""The composition root: one loaded config -> pools, routers, listeners; start and stop.

Nothing else in wsproxy builds long-lived objects or holds module-level state: App owns
them and passes them in (ARCHITECTURE.md principle 5).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket

from wsproxy import __version__, _speedups
from wsproxy.balancing import Pool
from wsproxy.logs import ACCESS, event, setup_logging
from wsproxy.plugin_setup import load_chains
from wsproxy.protocol.forwarding import TrustedProxies
from wsproxy.proxy.context import ListenerContext, ProxyState
from wsproxy.proxy.endpoint import Endpoint
from wsproxy.proxy.idle import IdleSweeper
from wsproxy.proxy.proxy_accept import ProxyAccept
from wsproxy.proxy.session import ClientSession
from wsproxy.proxy.tcp import TcpSession
from wsproxy.proxy.upstream import IdleConnections
from wsproxy.routing import Router


class _Acceptor:
    """The sink of a freshly accepted client connection: starts its session."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx

    def endpoint(self) -> Endpoint:
        ep = _ClientEndpoint()
        ep.ctx = self.ctx
        return ep


class _ClientEndpoint(Endpoint):
    __slots__ = ("ctx",)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ctx = self.ctx
        if ctx.state.draining:
            transport.abort()
            return
        # mode = "http": HTTP/1.1 + WebSocket (session.py); mode = "tcp": layer 4 (tcp.py)
        make_session = TcpSession if ctx.config.mode == "tcp" else ClientSession
        if ctx.config.accept_proxy:
            # A PROXY header first (from trusted peers), then the session: proxy_accept.py.
            first = ProxyAccept(ctx, self, make_session)
        else:
            first = make_session(ctx, self)
        self.sink = first
        first.start()


class App:
    def __init__(self, config) -> None:
        self.config = config
        self.state = ProxyState(idle=IdleConnections(), sweeper=IdleSweeper())
        self.pools = {name: Pool(cfg) for name, cfg in config.pools.items()}
        self.chains = load_chains(config)  # ConfigErrors if a plugin fails to load
        self.contexts = {
            name: ListenerContext(
                config=lc,
                router=Router(lc.routes),
                pools=self.pools,
                trusted=TrustedProxies(lc.trusted_proxies),
                state=self.state,
                plugins=self.chains[name],
            )
            for name, lc in config.listeners.items()
        }
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = self.state.loop = asyncio.get_running_loop()
        for name, ctx in self.contexts.items():
            bind = ctx.config.bind
            acceptor = _Acceptor(ctx)
            server = await loop.create_server(
                acceptor.endpoint, bind.host, bind.port, reuse_address=True, backlog=1024,
                family=socket.AF_INET6 if ":" in bind.host else socket.AF_INET,
            )
            self.servers.append(server)
            event(logging.INFO, "listening", listener=name, bind=str(bind), mode=ctx.config.mode)

    async def stop(self, grace: float) -> None:
        """Stop accepting; Close 1001 on every WebSocket; wait up to ``grace``; then cut."""
        self.state.draining = True
        for server in self.servers:
            server.close()
        sessions = list(self.state.sessions)
        event(logging.INFO, "shutting down", sessions=len(sessions), grace_s=grace)
        for session in sessions:
            session.shutdown()
        tasks = [s.task for s in sessions if s.task is not None and not s.task.done()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            for session in list(self.state.sessions):
                session.ep.abort()
            for task in pending:
                task.cancel()
            if pending:
                event(logging.WARNING, "grace period over: connections cut", count=len(pending))
                await asyncio.wait(pending, timeout=1.0)
        self.state.idle.close_all()
        self.state.sweeper.close()


async def serve(config, *, extra_startup=None) -> None:
    """Run ``config`` until SIGTERM/SIGINT, then drain within ``server.grace``.

    ``extra_startup`` (the demo's members) runs once the listeners are up; it may return
    an async cleanup function, awaited after the proxy has stopped.
    """
    app = App(config)
    await app.start()
    # Everything built so far (config, pools, routers, modules) lives as long as the process:
    # keep it out of the cyclic GC's generations, so collections only walk per-connection
    # objects (GC was ~4% of the CPU per WebSocket handshake in benchmarks/RESULTS.md).
    gc.freeze()
    for pool in app.pools.values():
        if pool.sticky is not None and pool.sticky.generated_secret:
            event(logging.WARNING, "persist cookie secret generated at random: set persist.secret so sticky "
                  "sessions survive a restart", pool=pool.name, cookie=pool.sticky.name)
    cleanup = await extra_startup() if extra_startup is not None else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    event(logging.INFO, "wsproxy %s ready" % __version__, build=_speedups.IMPLEMENTATION,
          listeners=len(app.servers))
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    await app.stop(config.server.grace)
    if cleanup is not None:
        await cleanup()
    event(logging.INFO, "stopped")


def run(config, *, log_level: str | None = None, log_format: str | None = None, extra_startup=None) -> None:
    server = config.server
    setup_logging(log_level or server.log_level, log_format or server.log_format)
    ACCESS.disabled = not server.access_log
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        asyncio.run(serve(config, extra_startup=extra_startup))
    else:
        uvloop.run(serve(config, extra_startup=extra_startup))
