"""What a client session needs to know about its listener and the running proxy.

Built once per config generation by the composition root (app.py) and shared, read-only,
by every session accepted on that listener. A reload builds a new generation (new contexts,
a new ProxyState); sessions keep the contexts they were accepted with until they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProxyState:
    """One config generation's mutable state that sessions see: its live sessions, whether
    it is draining (a reload retired it, or the process is stopping), and the node-wide
    services every generation of the process shares."""

    idle: object  # upstream.IdleConnections (per generation: a retired one closes its own)
    sweeper: object = None  # idle.IdleSweeper: the WebSocket idle timeouts
    sessions: set = field(default_factory=set)
    draining: bool = False  # no new requests: idle keep-alive connections close, busy ones finish
    loop: object = None  # the running loop, set at start: sessions need not look it up
    table: object = None  # node.table.NodeTable: member counts and control cells of the node
    metrics: object = None  # node.metrics.Metrics, or None
    live: object = None  # node.live.LiveConnections: this process's WebSockets per member
    generation: int = 0  # the config generation (1 = the config the process started with)


@dataclass(frozen=True)
class ListenerContext:
    config: object  # config.schema.ListenerConfig
    router: object  # routing.Router
    pools: dict  # name -> balancing.Pool
    trusted: object  # protocol.forwarding.TrustedProxies
    state: ProxyState
    proto: str = "http"
    plugins: object = None  # scripting.PluginChain of this listener, or None (no plugin applies)
    tls: object = None  # tls.Terminator of a TLS listener (this generation's certificates), or None
    hsts: tuple = ()  # (("Strict-Transport-Security", value),) on a TLS listener with hsts, else ()
    # proxy.limits.ListenerLimits of the listener's bind: one per bind, shared by every
    # generation (a reload keeps the live counts); None = no limits (tests)
    limits: object = None
