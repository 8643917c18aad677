"""The composition root: a loaded config -> generations of pools, routers, listeners; start,
reload, drain and stop.

Nothing else in wsproxy builds long-lived objects or holds module-level state: App owns
them and passes them in (ARCHITECTURE.md principle 5).

Generations. Every config the process runs is a *generation* (1 = the one it started with):
its own Pools, Routers, plugin chains, ListenerContexts and ProxyState. A reload (SIGHUP
with ``workers = 1``; node/master.py forks new workers otherwise) builds the next one and
switches every listener's acceptor to it: a listener whose bind did not change keeps its
socket, so nothing is refused or reset during the switch. Sessions keep the contexts they
were accepted with, so a live WebSocket keeps its member and its relay and flows on. The
old generation *drains*: idle keep-alive connections close, requests in flight finish,
WebSockets (and tcp sessions) may live ``drain_timeout`` more, then get Close 1001 spread
over ``close_spread``, and what is left after a short linger is cut. So old generations
never pile up (anchors-features.md §2 items 1, 2: reloads that drop WebSockets, old
processes that never exit). A generation drains by its own config's settings, as an old
nginx worker keeps its ``worker_shutdown_timeout`` and an old HAProxy its ``hard-stop-after``.

The node-wide pieces come from outside (composition): the NodeTable (member counts shared
by every process and every generation: a member keeps its column across reloads, so the
old generation's connections still count for the new one's least_conn and max_conns), the
Metrics, the ControlPlane (in the process that is the control plane: the only process with
``workers = 1``, the master otherwise) and LiveConnections (this process's WebSockets per
member, ticked every 100 ms to carry out drains and rebalancing).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import secrets
import signal
import socket
import sys
from dataclasses import replace

from wsproxy import __version__, _speedups
from wsproxy.balancing import Pool
from wsproxy.config import load_config
from wsproxy.errors import ConfigError, ConfigErrors
from wsproxy.logs import ACCESS, event, setup_logging
from wsproxy.node.table import NodeTable
from wsproxy.plugin_setup import load_chains
from wsproxy.protocol.forwarding import TrustedProxies
from wsproxy.proxy.context import ListenerContext, ProxyState
from wsproxy.proxy.endpoint import Endpoint
from wsproxy.proxy.idle import IdleSweeper
from wsproxy.proxy.limits import ListenerLimits, client_key, refused_connection
from wsproxy.proxy.proxy_accept import ProxyAccept
from wsproxy.proxy.session import ClientSession
from wsproxy.proxy.tls_accept import TlsAccept, tls_first
from wsproxy.proxy.tcp import TcpSession
from wsproxy.proxy.upstream import IdleConnections
from wsproxy.routing import Router
from wsproxy.scripting import SharedStore
from wsproxy.tls import hsts_header, listener_tls, member_tls

TICK = 0.1  # seconds between LiveConnections / node-table ticks
BACKLOG = 1024
CUT_LINGER = 2.0  # after the last Close 1001 of a drain: time for the closing handshakes, then cut
DRAIN_POLL = 0.25  # how often a draining generation looks whether its sessions are gone
CLOSE_1001 = 1001


# -- the node-wide services (guarded: their modules arrive from other engineers) -------------

def make_metrics(table: NodeTable):
    """node.metrics.Metrics(table), or None while that module does not exist."""
    try:
        from wsproxy.node.metrics import Metrics
    except ImportError:  # pragma: no cover - arrives with issue #6 (admin + metrics)
        return None
    return Metrics(table)


def make_control(config, table: NodeTable, metrics):
    """node.control.ControlPlane: registers every member column and metric series of
    ``config`` now (before any worker forks)."""
    from wsproxy.node.control import ControlPlane

    return ControlPlane(config, table, metrics)


def make_live(table: NodeTable, metrics=None):
    """This process's node.live.LiveConnections."""
    from wsproxy.node.live import LiveConnections

    return LiveConnections(table, on_close=metrics.member_close if metrics is not None else None)


def make_admin(config, control, metrics):
    """An AdminServer on ``server.admin``, or None (not configured, or not built yet)."""
    if config.server.admin is None or control is None:
        return None
    try:
        from wsproxy.admin import AdminServer
    except ImportError:  # pragma: no cover - arrives with issue #6 (admin + metrics)
        event(logging.WARNING, "server.admin is set but this build has no admin API", admin=str(config.server.admin))
        return None
    return AdminServer(config.server.admin, control, metrics)


async def restart_admin(admin, old, new, control, metrics):
    """A reload: the admin API moves when ``server.admin`` changed. Returns the admin server now running."""
    if old.server.admin == new.server.admin:
        return admin
    if admin is not None:
        await admin.stop()
    admin = make_admin(new, control, metrics)
    if admin is not None:
        try:
            await admin.start()
        except OSError as exc:
            event(logging.ERROR, "admin API cannot listen", bind=str(new.server.admin), error=str(exc))
            return None
        event(logging.INFO, "admin API listening", bind=str(new.server.admin))
    return admin


def apply_logging(server, log_level: str | None = None, log_format: str | None = None) -> None:
    """``server``'s log settings, under the command line's overrides (at start and on reload)."""
    setup_logging(log_level or server.log_level, log_format or server.log_format)
    ACCESS.disabled = not server.access_log


def worker_count(server) -> int:
    """``server.workers`` as a number: "auto" is one per CPU this process may run on."""
    if server.workers == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    return int(server.workers)


# -- reading a config for a reload -----------------------------------------------------------

def log_rejected(exc: ConfigErrors, running: int) -> None:
    """A reload's config is bad: every error with its key path, as ``wsproxy check`` prints them."""
    event(logging.ERROR, "reload rejected: %s has %d error(s); generation %d keeps running"
          % (exc.source, len(exc.errors), running), source=exc.source, errors=len(exc.errors))
    for error in exc.errors:
        event(logging.ERROR, "  %s" % error, source=exc.source, key=error.path)


def with_node_secret(config, secret: str):
    """``config`` with ``secret`` as the sticky-cookie key of every pool that sets none.

    Without one, each Pool would draw its own random key: cookies issued by one worker would
    be unknown to the others, and every reload would forget every cookie. One random key per
    node (drawn when the process starts) keeps stickiness across workers and reloads; a
    restart still loses it, hence the warning."""
    generated = [name for name, pool in config.pools.items() if pool.persist is not None and pool.persist.secret is None]
    if not generated:
        return config
    pools = dict(config.pools)
    for name in generated:
        pool = pools[name]
        pools[name] = replace(pool, persist=replace(pool.persist, secret=secret))
        event(logging.WARNING, "persist cookie secret generated at random: set persist.secret so sticky "
              "sessions survive a restart", pool=name, cookie=pool.persist.cookie)
    return replace(config, pools=pools)


def prepare(config, shared: SharedStore, table: NodeTable) -> dict:
    """Load ``config``'s plugins (into ``shared``, so plugin state survives a reload) and
    build its pools and routers once: everything a start checks beyond the file itself. Gives
    every member its table column. Returns the plugin chains; raises ConfigErrors."""
    chains = load_chains(config, shared)
    try:
        for pool_config in config.pools.values():
            Pool(pool_config, table=table)
        for listener in config.listeners.values():
            Router(listener.routes)
    except ConfigError as exc:
        raise ConfigErrors([exc], config.source) from None
    return chains


def read_config(path: str, shared: SharedStore, table: NodeTable, secret: str):
    """A reload's config: (config, chains) from ``path``; raises ConfigErrors."""
    config = with_node_secret(load_config(path), secret)
    return config, prepare(config, shared, table)


def read_reload(path: str, shared: SharedStore, table: NodeTable, secret: str, running: int):
    """``read_config`` for a SIGHUP: (config, chains), or None with the reason logged (the
    running generation ``running`` stays)."""
    try:
        return read_config(path, shared, table, secret)
    except ConfigErrors as exc:
        log_rejected(exc, running)
    except RuntimeError as exc:  # the node table has no column left for a new member
        event(logging.ERROR, "reload rejected: %s; generation %d keeps running (restart to start "
              "afresh)" % (exc, running), source=path)
    return None


async def coalesced_reloads(owner) -> None:
    """Run ``owner.reload()`` until no SIGHUP arrived meanwhile (``owner._reload_again``):
    SIGHUPs during a reload coalesce into one more. A failure is logged, never raised."""
    while True:
        owner._reload_again = False
        try:
            await owner.reload()
        except asyncio.CancelledError:
            raise
        except Exception:
            logging.getLogger("wsproxy").exception("reload failed; generation %d keeps running",
                                                   owner.current.number)
        if not owner._reload_again or owner.stopping:
            return


def config_changes(old, new) -> dict:
    """What a reload changes, for its log line: names of listeners and pools added, removed
    or changed, and whether the plugins or server settings did."""
    out: dict = {}
    for kind in ("listeners", "pools"):
        before, after = getattr(old, kind), getattr(new, kind)
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and after[n] != before[n]]
        for label, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                out[f"{kind}_{label}"] = ",".join(names)
    if old.plugins != new.plugins:
        out["plugins_changed"] = True
    if old.server != new.server:
        out["server_changed"] = True
    return out


# -- accepting -------------------------------------------------------------------------------

class _Acceptor:
    """The sink of a freshly accepted client connection: starts its session on the
    listener's current generation (``ctx`` is switched by a reload)."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx

    def endpoint(self) -> Endpoint:
        ep = _ClientEndpoint()
        ep.acceptor = self
        ep.limits = ep.limit_key = None
        return ep


class _ClientEndpoint(Endpoint):
    # limits: the ListenerLimits this connection is counted in (None: not counted);
    # limit_key: the client key it is counted under there (None: not per client).
    __slots__ = ("acceptor", "limits", "limit_key")

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # The context is read now, not when the connection was accepted: a reload between
        # the two hands it to the new generation instead of the draining one.
        ctx = self.acceptor.ctx
        if ctx.state.draining:  # the process is stopping
            transport.abort()
            return
        limits = ctx.limits
        if limits is not None:
            # A peer in trusted_proxies is a balancer carrying many clients: with accept_proxy
            # the client its PROXY header names is counted (proxy_accept.py); without, it is
            # not limited per IP. The listener's max_conns counts every connection.
            ip = self.peer[0]
            key = None if ctx.trusted and ctx.trusted.contains(ip) else client_key(ip)
            refused = limits.open(key)
            if refused is not None:
                refused_connection(ctx, limits, refused, self.address)
                transport.abort()
                return
            self.limits, self.limit_key = limits, key
        # mode = "http": HTTP/1.1 + WebSocket (session.py); mode = "tcp": layer 4 (tcp.py)
        make_session = TcpSession if ctx.config.mode == "tcp" else ClientSession
        if ctx.tls is not None:
            make_session = tls_first(make_session)  # the TLS handshake, then the session: tls_accept.py
        if ctx.config.accept_proxy and (ctx.tls is None or ctx.trusted.contains(self.peer[0])):
            # A PROXY header first (from trusted peers), then the session: proxy_accept.py.
            # (On a TLS listener anyone else starts TLS at once: a forged header fails the handshake.)
            first = ProxyAccept(ctx, self, make_session)
        else:
            first = make_session(ctx, self)
        self.sink = first
        first.start()

    def connection_lost(self, exc) -> None:
        limits = self.limits
        if limits is not None:
            self.limits = None
            limits.close(self.limit_key)
        super().connection_lost(exc)


class _Listener:
    """One bind: its server and the acceptor a reload switches."""

    __slots__ = ("bind", "name", "acceptor", "server", "sock")

    def __init__(self, bind, name: str, acceptor: _Acceptor, server, sock) -> None:
        self.bind, self.name, self.acceptor, self.server, self.sock = bind, name, acceptor, server, sock

    def close(self) -> None:
        self.server.close()
        if self.sock is not None:
            self.sock.close()  # a worker's slot socket: the master and the next generation keep theirs


class Generation:
    """One config and everything built from it; its sessions live in ``state.sessions``."""

    def __init__(self, number: int, config, chains, pools: dict, contexts: dict, state: ProxyState) -> None:
        self.number = number
        self.config = config
        self.chains = chains
        self.pools = pools
        self.contexts = contexts  # listener name -> ListenerContext
        self.state = state
        self.retired_at: float | None = None
        self.drain: asyncio.Task | None = None


def _terminator(name: str, listener, source: str):
    """A TLS listener's Terminator (wsproxy/tls.py), or None. Built for each generation: a
    reload reads the certificate files again. (validate.py loaded them already; a file that
    changed since raises ConfigErrors, which refuses the start or the reload.)"""
    if listener.tls is None:
        return None
    return listener_tls(listener.tls, source, "listeners.%s.tls" % name, alpn=listener.mode == "http", warn=True)


def _request_session(session) -> bool:
    """A session that is an HTTP exchange (or about to become one), as opposed to a
    long-lived WebSocket relay or tcp session."""
    return isinstance(session, (ClientSession, ProxyAccept, TlsAccept))


def _close_1001(session, reason: str) -> None:
    close_both = getattr(session, "close_both", None)
    if close_both is not None:  # a WebSocket relay: Close 1001 to both legs, unless it is closing already
        if session.closed_by is None and not session.done.done():
            close_both(CLOSE_1001, reason)
    else:
        session.shutdown()


class App:
    """One process's data plane: the generations it serves and the listeners they share."""

    def __init__(self, config, *, table: NodeTable | None = None, metrics=None, control=None, live=None,
                 generation: int = 1, chains=None, shared: SharedStore | None = None,
                 sockets: dict | None = None) -> None:
        self.table = table if table is not None else NodeTable()
        self.metrics = metrics
        self.control = control  # ControlPlane (this process is the control plane) or None
        self.live = live
        self.shared = shared if shared is not None else SharedStore()
        self.secret = secrets.token_urlsafe(32)  # the node's sticky-cookie key (with_node_secret)
        config = with_node_secret(config, self.secret)
        self.sockets = sockets or {}  # Address -> listening socket made by the master (a worker)
        # Shared by every generation: parked member connections are reused by the next
        # one (a draining generation parks none), and one sweeper times out all WebSockets.
        self.idle = IdleConnections()
        self.sweeper = IdleSweeper()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Address -> ListenerLimits: one per bind, shared by the generations that listen
        # there, so connections of a draining generation still count (proxy/limits.py).
        self.limits: dict = {}
        self.current = self._build(config, generation, chains)  # ConfigErrors if a plugin fails to load
        self.generations: list[Generation] = [self.current]  # oldest first; the last is current
        self.listeners: dict = {}  # Address -> _Listener
        self.admin = None
        self.stopping = False
        self.on_tick = None  # extra work for the periodic tick (a worker checks its master)
        self.log_overrides: tuple = (None, None)  # the command line's --log-level, --log-format
        self._tick_handle: asyncio.TimerHandle | None = None
        self._reloading: asyncio.Task | None = None
        self._reload_again = False

    # What serve() and older callers read: the current generation's pieces.
    @property
    def config(self):
        return self.current.config

    @property
    def pools(self) -> dict:
        return self.current.pools

    @property
    def state(self) -> ProxyState:
        return self.current.state

    @property
    def servers(self) -> list:
        return [listener.server for listener in self.listeners.values()]

    def _build(self, config, number: int, chains=None) -> Generation:
        if chains is None:
            chains = load_chains(config, self.shared)
        for chain in chains.values():
            if chain is not None:
                chain.metrics = self.metrics  # plugin errors -> wsproxy_plugin_errors_total
        pools = {name: Pool(cfg, table=self.table) for name, cfg in config.pools.items()}
        for name, pool in pools.items():
            if pool.config.tls is not None:  # TLS to the members: upstream.py connects with it
                pool.tls = member_tls(pool.config.tls, config.source, "pools.%s.tls" % name)
        if self.table.row:
            # A worker of a master: random_two's generator starts from a fixed seed (replayable
            # runs); each worker needs its own sequence, or they all draw the same pairs.
            for pool in pools.values():
                for balancer in (pool.balancer, pool.fallback):
                    rng = getattr(balancer, "rng", None)
                    if rng is not None:
                        rng.seed(self.table.row * 1_000_003 + os.getpid())
        state = ProxyState(idle=self.idle, sweeper=self.sweeper, table=self.table, metrics=self.metrics,
                           live=self.live, generation=number, loop=self.loop)
        contexts = {
            name: ListenerContext(
                config=lc,
                router=Router(lc.routes),
                pools=pools,
                trusted=TrustedProxies(lc.trusted_proxies),
                state=state,
                plugins=chains[name],
                limits=self._limits_for(lc),
                proto="https" if lc.tls is not None else "http",
                tls=_terminator(name, lc, config.source),
                hsts=hsts_header(lc.hsts),
            )
            for name, lc in config.listeners.items()
        }
        return Generation(number, config, chains, pools, contexts, state)

    def _limits_for(self, listener) -> ListenerLimits:
        """The limits of ``listener``'s bind: the running one (its numbers change when the
        generation is switched in, ``reload``), or new ones."""
        limits = self.limits.get(listener.bind)
        if limits is None:
            limits = self.limits[listener.bind] = ListenerLimits.for_listener(listener)
        return limits

    # -- start ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.current.state.loop = loop
        try:
            for name, ctx in self.current.contexts.items():
                self.listeners[ctx.config.bind] = await self._listen(name, ctx)
        except BaseException:
            for listener in self.listeners.values():
                listener.close()
            self.listeners.clear()
            raise
        if self.control is not None:
            self.control.start()
            self.admin = make_admin(self.config, self.control, self.metrics)
            if self.admin is not None:
                await self.admin.start()
                event(logging.INFO, "admin API listening", bind=str(self.config.server.admin))
        self._tick_handle = loop.call_later(TICK, self._tick)
        if self._reload_again:  # a SIGHUP came while starting
            self.request_reload()

    async def _listen(self, name: str, ctx: ListenerContext) -> _Listener:
        loop = self.loop
        bind = ctx.config.bind
        acceptor = _Acceptor(ctx)
        sock = self.sockets.get(bind)
        if sock is not None:
            server = await loop.create_server(acceptor.endpoint, sock=sock, backlog=BACKLOG)
        else:
            server = await loop.create_server(
                acceptor.endpoint, bind.host, bind.port, reuse_address=True, backlog=BACKLOG,
                family=socket.AF_INET6 if ":" in bind.host else socket.AF_INET,
            )
        event(logging.INFO, "listening", listener=name, bind=str(bind), mode=ctx.config.mode,
              generation=ctx.state.generation)
        return _Listener(bind, name, acceptor, server, sock)

    def _tick(self) -> None:
        try:
            if self.live is not None:
                self.live.tick(self.loop.time())
            self.table.refresh_rows()
            if self.on_tick is not None:
                self.on_tick()
        except Exception:  # the tick must never stop
            logging.getLogger("wsproxy").exception("periodic tick failed")
        self._tick_handle = self.loop.call_later(TICK, self._tick)

    # -- reload (workers = 1: this process is the whole node) -----------------------------
    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload in progress (SIGHUPs coalesce)."""
        if self.stopping:
            return
        if self._tick_handle is None or (self._reloading is not None and not self._reloading.done()):
            self._reload_again = True  # still starting, or reloading: once more when done
            return
        self._reloading = self.loop.create_task(coalesced_reloads(self))


    async def reload(self, path: str | None = None) -> bool:
        """Read ``path`` (default: the running config's file) and switch to it; False (and
        the errors logged, the old generation untouched) when it is bad or cannot listen."""
        old = self.current
        path = path or old.config.source
        if not path or not os.path.isfile(path):
            event(logging.WARNING, "reload ignored: the running config was not read from a file", source=path)
            return False
        event(logging.INFO, "reloading", source=path, generation=old.number)
        read = read_reload(path, self.shared, self.table, self.secret, old.number)
        if read is None:
            return False
        config, chains = read
        if worker_count(config.server) != 1:
            event(logging.WARNING, "server.workers changed: a single-process wsproxy cannot start workers "
                  "on a reload; restart it to apply", workers=config.server.workers)
        gen = self._build(config, old.number + 1, chains)
        gen.state.loop = self.loop
        opened: dict = {}
        try:
            for name, ctx in gen.contexts.items():
                if ctx.config.bind not in self.listeners:
                    opened[ctx.config.bind] = await self._listen(name, ctx)
        except OSError as exc:
            for listener in opened.values():
                listener.close()
            event(logging.ERROR, "reload rejected: cannot listen (%s); generation %d keeps running"
                  % (exc.strerror or exc, old.number), source=path)
            return False
        # The commit point: from here on the new generation is the node's config.
        if self.control is not None:
            self.control.apply(config)
            self.control.generation = gen.number
        elif self.metrics is not None:
            self.metrics.register(config)
        for ctx in gen.contexts.values():
            ctx.limits.configure_from(ctx.config)  # the new numbers; the counts stay
            listener = self.listeners.get(ctx.config.bind)
            if listener is not None:
                listener.acceptor.ctx = ctx  # the switch: the next accepted connection is the new generation's
        self.listeners.update(opened)
        binds = {ctx.config.bind for ctx in gen.contexts.values()}
        for bind in [b for b in self.listeners if b not in binds]:
            listener = self.listeners.pop(bind)
            listener.close()
            self.limits.pop(bind, None)  # its connections still hold (and release) the old one
            event(logging.INFO, "listener closed", listener=listener.name, bind=str(bind))
        for bind, listener in self.listeners.items():
            listener.name = next(name for name, ctx in gen.contexts.items() if ctx.config.bind == bind)
        self.current = gen
        self.generations.append(gen)
        if self.control is not None:
            self.admin = await restart_admin(self.admin, old.config, config, self.control, self.metrics)
        if old.config.server != config.server:
            apply_logging(config.server, *self.log_overrides)
        self.retire(old)
        event(logging.INFO, "reloaded: generation %d serves" % gen.number, generation=gen.number,
              previous=old.number, draining=len(self.generations) - 1, **config_changes(old.config, config))
        return True

    # -- draining ------------------------------------------------------------------------
    def retire(self, gen: Generation) -> None:
        """Stop giving ``gen`` new work and let it drain (module docstring)."""
        if gen.retired_at is not None:
            return
        gen.state.draining = True
        gen.retired_at = self.loop.time()
        for pool in gen.pools.values():
            pool.close()  # its passive ejections no longer speak for the node (the new Pools decide)
        for session in list(gen.state.sessions):
            if isinstance(session, ClientSession):
                # idle between requests: closed now; a request in progress (or not sent yet) is served
                session.shutdown(spare_new=True)
        gen.drain = self.loop.create_task(self._drain(gen))

    async def _drain(self, gen: Generation) -> None:
        server = gen.config.server
        sessions = gen.state.sessions
        deadline = gen.retired_at + server.drain_timeout
        loop = self.loop
        while sessions and loop.time() < deadline:
            await asyncio.sleep(min(DRAIN_POLL, deadline - loop.time()))
        left = len(sessions)
        if left:
            event(logging.INFO, "generation %d: drain_timeout over, closing its WebSockets with 1001" % gen.number,
                  generation=gen.number, sessions=left, spread_s=server.close_spread)
            await self._spread_close([sessions], server.close_spread,
                                     "config reloaded (generation %d retired)" % gen.number)
            cut = await self._cut_after(sessions, CUT_LINGER)
        else:
            cut = 0
        if gen in self.generations:
            self.generations.remove(gen)
        # A worker's generation is one of several processes: the master says when it ended.
        what = "generation %d ended" if self.control is not None else "generation %d drained in this worker"
        event(logging.INFO, what % gen.number, generation=gen.number, pid=os.getpid(),
              drained_s=round(loop.time() - gen.retired_at, 3), closed=left, cut=cut)

    async def _spread_close(self, session_sets: list, spread: float, reason: str) -> None:
        """Close every long-lived session of ``session_sets`` with 1001 (WebSockets) or a
        shutdown (tcp), evenly over ``spread`` seconds in random order, so clients do not
        all reconnect at once; request sessions are told to finish. Sessions that appear
        meanwhile (a handshake in progress becomes a relay) are closed at the end."""
        loop = self.loop
        done: set = set()
        todo = [s for sessions in session_sets for s in sessions]
        random.shuffle(todo)
        todo.sort(key=_request_session, reverse=True)  # request sessions first, at once
        long = sum(1 for s in todo if not _request_session(s))
        start = loop.time()
        i = 0
        for session in todo:
            if session in done:
                continue
            done.add(session)
            if _request_session(session):
                session.shutdown()
                continue
            due = start + spread * i / long
            i += 1
            wait = due - loop.time()
            if wait > 0.005:
                await asyncio.sleep(wait)
            if not _gone(session):
                _close_1001(session, reason)
        for sessions in session_sets:
            for session in list(sessions):
                if session not in done:
                    if _request_session(session):
                        session.shutdown()
                    else:
                        _close_1001(session, reason)

    async def _cut_after(self, sessions: set, timeout: float) -> int:
        """Wait up to ``timeout`` for ``sessions`` to end; abort the rest. Returns how many were cut."""
        waiting = [s.task for s in list(sessions) if s.task is not None and not s.task.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        rest = list(sessions)
        for session in rest:
            session.ep.abort()
            task = session.task
            if task is not None and not task.done() and isinstance(task, asyncio.Task):
                task.cancel()
        if rest:
            event(logging.WARNING, "connections cut after the grace period", count=len(rest))
            pending = [s.task for s in rest if isinstance(s.task, asyncio.Task) and not s.task.done()]
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        return len(rest)

    # -- stop ----------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Close the listeners (a worker: its fd of each slot socket; the master and the next
        generation keep theirs, so connections queued there are not lost)."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()

    async def drain_and_stop(self) -> None:
        """A worker told to drain (a reload forked its successor): stop accepting, drain the
        generation like a reload would, then stop."""
        self.stop_accepting()
        gen = self.current
        self.retire(gen)
        try:
            await gen.drain
        except asyncio.CancelledError:
            if self.stopping:
                return  # a SIGTERM took over: stop() finishes
            raise
        await self._finish()

    async def stop(self, grace: float, spread: float | None = None) -> None:
        """Graceful stop (SIGTERM): stop accepting; requests finish; every WebSocket gets
        Close 1001, spread over ``close_spread``; wait up to ``grace`` more; then cut."""
        if self.stopping:
            return
        self.stopping = True
        spread = self.config.server.close_spread if spread is None else spread
        self.stop_accepting()
        for gen in self.generations:
            gen.state.draining = True
            if gen.drain is not None and not gen.drain.done():
                gen.drain.cancel()
        sets = [gen.state.sessions for gen in self.generations]
        count = sum(len(s) for s in sets)
        event(logging.INFO, "shutting down", sessions=count, spread_s=spread, grace_s=grace)
        await self._spread_close(sets, spread, "proxy shutting down")
        waiting = [s.task for sessions in sets for s in sessions if s.task is not None and not s.task.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=grace)
        rest = sum(len(s) for s in sets)
        if rest:
            event(logging.WARNING, "grace period over: connections cut", count=rest)
            for sessions in sets:
                await self._cut_after(sessions, 0)
        await self._finish()

    async def _finish(self) -> None:
        self.stopping = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()
        if self.live is not None:
            self.live.close_all()
        self.idle.close_all()
        self.sweeper.close()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self.control is not None:
            await self.control.stop()
        if self.metrics is not None:
            self.metrics.stop()  # this process's pending counts into its table row, before it goes


def _gone(session) -> bool:
    task = session.task
    return task is not None and task.done()


# -- one process (workers = 1) ---------------------------------------------------------------

async def serve(config, *, extra_startup=None, log_overrides: tuple = (None, None)) -> None:
    """Run ``config`` as the whole node: SIGHUP reloads, SIGTERM/SIGINT stop gracefully.

    ``extra_startup`` (the demo's members) runs once the listeners are up; it may return
    an async cleanup function, awaited after the proxy has stopped.
    """
    table = NodeTable()
    metrics = make_metrics(table)
    control = make_control(config, table, metrics)
    app = App(config, table=table, metrics=metrics, control=control, live=make_live(table, metrics))
    app.log_overrides = log_overrides
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before the listeners open: a SIGHUP from then on must reload, never kill the process.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    await app.start()
    # Everything built so far (config, pools, routers, modules) lives as long as the process:
    # keep it out of the cyclic GC's generations, so collections only walk per-connection
    # objects (GC was ~4% of the CPU per WebSocket handshake in benchmarks/RESULTS.md).
    gc.freeze()
    cleanup = await extra_startup() if extra_startup is not None else None
    event(logging.INFO, "wsproxy %s ready" % __version__, build=_speedups.IMPLEMENTATION,
          listeners=len(app.listeners), pid=os.getpid(), generation=1)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    await app.stop(app.config.server.grace)
    if cleanup is not None:
        await cleanup()
    event(logging.INFO, "stopped")


def run_loop(coro):
    """Run ``coro`` on a fresh uvloop (asyncio's loop if uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(config, *, log_level: str | None = None, log_format: str | None = None, extra_startup=None) -> None:
    """Run the proxy: one process (``workers = 1``, and the demo), or a master and its workers."""
    server = config.server
    apply_logging(server, log_level, log_format)
    try:
        if server.workers != 1 and extra_startup is None:
            from wsproxy.node.master import run_master

            code = run_master(config, log_level=log_level, log_format=log_format)
        else:
            run_loop(serve(config, extra_startup=extra_startup, log_overrides=(log_level, log_format)))
            code = 0
    except ConfigErrors as exc:  # a plugin that fails to load at start
        print(f"{exc.source}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        code = 1
    except OSError as exc:  # a bind that fails at start
        event(logging.ERROR, "cannot start: %s" % exc)
        code = 1
    if code:
        sys.exit(code)
