"""What a client session needs to know about its listener and the running proxy.

Built once per config generation by the composition root (app.py) and shared, read-only,
by every session accepted on that listener.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProxyState:
    """The running proxy's mutable state that sessions see: live sessions, draining flag."""

    idle: object  # upstream.IdleConnections
    sweeper: object = None  # idle.IdleSweeper: the WebSocket idle timeouts
    sessions: set = field(default_factory=set)
    draining: bool = False
    loop: object = None  # the running loop, set at start: sessions need not look it up


@dataclass(frozen=True)
class ListenerContext:
    config: object  # config.schema.ListenerConfig
    router: object  # routing.Router
    pools: dict  # name -> balancing.Pool
    trusted: object  # protocol.forwarding.TrustedProxies
    state: ProxyState
    proto: str = "http"
    plugins: object = None  # scripting.PluginChain of this listener, or None (no plugin applies)
