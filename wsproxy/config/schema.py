"""The validated configuration: frozen dataclasses, pure data.

Durations are float seconds, sizes int bytes, addresses ``Address``. The defaults here are
the only copy: the loader reads them from these classes, so changing one changes both.
A ``Config`` only exists once every check passed (``load_config`` / ``parse_config``).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        # IPv6 literals keep their brackets so the text parses back to the same Address.
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    workers: int | str = 1  # an int >= 1, or "auto" (one per CPU core)
    admin: Address | None = None
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "text"  # text | json
    access_log: bool = True
    state: str | None = None  # "redis://..." shared state; None = this node only
    grace: float = 10.0  # SIGTERM: seconds to close WebSockets before exiting
    drain_timeout: float = 300.0  # reload: an old generation's connections may finish within this
    close_spread: float = 5.0  # reload/SIGTERM: the Close 1001s are spread over this window


@dataclass(frozen=True, slots=True)
class RateConfig:
    """A token bucket per client IP: ``burst`` at once, refilled at ``rate`` per second."""

    rate: float = 20.0
    burst: int = 40


@dataclass(frozen=True, slots=True)
class CertConfig:
    """One certificate of a TLS listener's ``certs`` list (wsproxy/tls.py picks it by SNI)."""

    cert: str  # PEM file paths, as written (relative: next to the config file, else the working directory)
    key: str
    names: tuple[str, ...] = ()  # SNI names, exact or "*.example.com"; () = the certificate's DNS names


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A listener's TLS termination. The default certificate (no SNI, or a name no entry
    has) is ``cert``/``key`` when set, else the first of ``certs``."""

    cert: str | None = None  # PEM file paths, as written
    key: str | None = None
    certs: tuple[CertConfig, ...] = ()
    handshake_timeout: float = 10.0  # a TLS handshake not done within this is closed
    min_version: str = "1.2"  # "1.2" | "1.3"
    ciphers: str | None = None  # OpenSSL cipher string (TLS 1.2); None = Python's modern default


@dataclass(frozen=True, slots=True)
class HstsConfig:
    """Strict-Transport-Security on a TLS listener's HTTP responses."""

    max_age: float = 31536000.0  # 365d
    include_subdomains: bool = False
    preload: bool = False


@dataclass(frozen=True, slots=True)
class MemberTlsConfig:
    """A pool's TLS to its members (``tls = true`` is all defaults)."""

    ca: str | None = None  # PEM CA bundle; None = the system's CAs
    verify: bool = True  # check the member's chain and name
    sni: str | None = None  # None = the member's host when it is a name (an IP: no SNI, checked against the IP)
    cert: str | None = None  # client certificate and key (mTLS), PEM
    key: str | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    index: int  # position in the listener's routes list
    pool: str
    host: str | None = None  # exact, or "*.example.com"
    path: str | None = None  # exact match
    path_prefix: str | None = None
    allowed_origins: tuple[str, ...] = ()  # empty = any Origin
    relay: str | None = None  # None = the pool's relay
    ws_idle_timeout: float | None = None  # None = the pool's ws_idle_timeout
    ping_interval: float | None = None  # None = the pool's ping_interval
    pong_timeout: float | None = None  # None = the pool's pong_timeout
    reconnect: ReconnectConfig | None = None  # None = the pool's reconnect
    max_message_size: int | None = None  # None = the pool's max_message_size
    max_frame_size: int | None = None  # None = the pool's max_frame_size
    validate_utf8: bool | None = None  # None = the pool's validate_utf8
    listener: str = ""  # name of the listener holding this route (for labels)

    @property
    def label(self) -> str:
        """``"public.routes[2]"``: names the route in logs and the plan."""
        return f"{self.listener}.routes[{self.index}]" if self.listener else f"routes[{self.index}]"

    @property
    def is_catch_all(self) -> bool:
        return self.host is None and self.path is None and self.path_prefix is None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    bind: Address
    mode: str = "http"  # "http" (HTTP/1.1 + WebSocket) | "tcp" (layer 4)
    routes: tuple[RouteConfig, ...] = ()  # http listeners
    pool: str | None = None  # tcp listeners
    trusted_proxies: tuple[str, ...] = ()  # CIDR strings, normalized ("10.0.0.1" -> "10.0.0.1/32")
    head_timeout: float = 10.0  # a request head must arrive within this (408)
    keepalive_timeout: float = 60.0  # idle time between requests on a client connection
    max_head_bytes: int = 65536  # 431 above this
    max_headers: int = 100  # 431 above this
    max_uri_bytes: int = 8192  # 414 above this
    tls: TlsConfig | None = None
    hsts: HstsConfig | None = None  # TLS listeners only
    redirect_https: str | None = None  # "https://example.com": answer every request with a redirect
    proxy_protocol: str | None = None  # "v1" | "v2": send a PROXY header to members (tcp mode)
    accept_proxy: bool = False  # expect a PROXY v1/v2 header from peers in trusted_proxies
    idle_timeout: float = 3600.0  # tcp listeners: no byte either way for this long closes both sides
    # Client connection limits (proxy/limits.py), per worker process; 0 = off.
    max_conns: int = 20000  # connections open on this listener; over it a new one is closed at once
    max_conns_per_ip: int = 0  # per client IP (NAT'd offices share one); over it closed at once
    handshake_rate_per_ip: RateConfig | None = None  # WebSocket upgrades per client IP; over it 429


@dataclass(frozen=True, slots=True)
class MemberConfig:
    addr: Address
    weight: int = 1
    max_conns: int = 10000  # resolved from the pool's max_conns when not set on the member


@dataclass(frozen=True, slots=True)
class PersistConfig:
    cookie: str  # name of the sticky cookie the proxy inserts
    secret: str | None = None  # HMAC key for the cookie value; None = a random one per process
    max_age: float | None = None  # seconds; None = a session cookie


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Requests waiting for a slot when every member is at max_conns (HAProxy's backend queue)."""

    size: int = 100  # waiting requests per pool; 0 = no queue, full means 503 at once
    timeout: float = 5.0  # a queued request gets 503 after waiting this long


@dataclass(frozen=True, slots=True)
class HealthConfig:
    type: str  # "tcp" | "http" (expects 2xx/3xx) | "ws" (expects a 101 and a pong)
    path: str = "/"  # http and ws checks
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2  # consecutive passes to mark a member up
    fall: int = 3  # consecutive failures to mark it down
    status: tuple[int, ...] = ()  # http checks: the statuses that pass; () = any 2xx or 3xx
    jitter: float = 0.1  # each interval is randomly stretched or shrunk by up to this fraction


@dataclass(frozen=True, slots=True)
class RebalanceConfig:
    """Shedding WebSockets from members above their fair share (issue #6)."""

    threshold: float = 0.2  # a member is over when it holds more than (1 + threshold) x its fair share
    rate: float = 10.0  # closes per second, at most, for the whole pool
    max_fraction: float = 0.5  # one rebalance moves at most this fraction of the pool's connections
    order: str = "oldest"  # "oldest" | "random": which of a member's connections go first
    auto: bool = True  # False: only on demand (admin API / wsproxy ctl rebalance)


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    """Opt-in reconnect of a WebSocket's member leg when its member is lost (proxy/reconnect.py)."""

    deadline: float = 5.0  # a member must accept the stored handshake within this, else Close 1014
    buffer: int = 1024 * 1024  # client bytes held for the replay (unanswered + sent meanwhile), at most


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    balance: str = "round_robin"  # round_robin | least_conn | random_two | hash
    hash_key: str | None = None  # balance = "hash": source_ip | header:N | cookie:N | query:N | path
    hash_fallback: str = "least_conn"  # balance = "hash": picks for requests without the key
    members: tuple[MemberConfig, ...] = ()
    max_conns: int = 10000  # per member, unless the member sets its own
    queue: QueueConfig = QueueConfig()
    persist: PersistConfig | None = None
    health: HealthConfig | None = None
    proxy_protocol: str | None = None  # "v1" | "v2"
    relay: str = "track"  # "raw" | "track" (routes may override)
    connect_timeout: float = 5.0
    response_timeout: float = 120.0  # member's response head after the request was sent
    retries: int = 2  # other members tried after a failed connect
    fail_threshold: int = 3  # consecutive connect failures that mark a member down
    down_time: float = 10.0  # how long a member stays down before it is tried again
    keepalive_conns: int = 16  # idle member connections kept per member
    keepalive_timeout: float = 30.0  # idle member connections closed after this
    ws_idle_timeout: float = 3600.0  # a WebSocket with no frame either way is closed after this
    down_time_max: float = 300.0  # passive ejection backs off exponentially up to this
    slow_start: float = 0.0  # a member back up ramps its weight and max_conns over this; 0 = off
    drain_spread: float = 10.0  # drain: the member's WebSockets get their Close 1012 over this window
    rebalance: RebalanceConfig | None = None  # None = only on demand, with RebalanceConfig's defaults
    ping_interval: float = 0.0  # the proxy pings both legs of a WebSocket this often; 0 = off
    pong_timeout: float = 10.0  # a leg that does not answer a ping within this is closed
    reconnect: ReconnectConfig | None = None  # None = off: a lost member means Close 1014
    # WebSocket limits, both directions, track and inspect relays (a raw relay sees no frames):
    max_message_size: int = 64 * 1024 * 1024  # a data message's payload, fragments added up; 0 = none (1009)
    max_frame_size: int = 0  # one frame's payload; 0 = only the message limit applies (1009)
    validate_utf8: bool = False  # text messages must be UTF-8 (1007); inspect routes always check
    tls: MemberTlsConfig | None = None  # None = plain TCP to the members


@dataclass(frozen=True, slots=True)
class PluginConfig:
    index: int  # position in [[plugins]]
    path: str  # .lua or .py, as written
    listeners: tuple[str, ...] | None = None  # None = every http listener
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    on_error: str | None = None  # abort | continue | disable; None = the plugin's own, else abort
    runtime: str | None = None  # Lua only: lua54 (default) | luajit
    limits: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # memory, instructions, timeout


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    listeners: dict[str, ListenerConfig]  # config-file order
    pools: dict[str, PoolConfig]  # config-file order
    plugins: tuple[PluginConfig, ...] = ()
    source: str = "<config>"


def effective_relay(config: Config, route: RouteConfig) -> str:
    """The relay mode a route's WebSockets use: the route's own, else its pool's."""
    if route.relay is not None:
        return route.relay
    pool = config.pools.get(route.pool)
    return pool.relay if pool is not None else defaults(PoolConfig)["relay"]


def effective_ws_idle_timeout(config: Config, route: RouteConfig) -> float:
    """Seconds a route's WebSocket may stay silent: the route's own, else its pool's."""
    if route.ws_idle_timeout is not None:
        return route.ws_idle_timeout
    pool = config.pools.get(route.pool)
    return pool.ws_idle_timeout if pool is not None else defaults(PoolConfig)["ws_idle_timeout"]


def effective_keepalive(config: Config, route: RouteConfig) -> tuple[float, float]:
    """(ping_interval, pong_timeout) of a route's WebSockets: the route's own, else its pool's."""
    pool = config.pools.get(route.pool)
    d = defaults(PoolConfig)
    interval = route.ping_interval if route.ping_interval is not None else (
        pool.ping_interval if pool is not None else d["ping_interval"])
    timeout = route.pong_timeout if route.pong_timeout is not None else (
        pool.pong_timeout if pool is not None else d["pong_timeout"])
    return interval, timeout


def effective_reconnect(config: Config, route: RouteConfig) -> ReconnectConfig | None:
    """The reconnect settings of a route's WebSockets: the route's own, else its pool's (None: off)."""
    if route.reconnect is not None:
        return route.reconnect
    pool = config.pools.get(route.pool)
    return pool.reconnect if pool is not None else None


@dataclass(frozen=True, slots=True)
class WsLimits:
    """The message limits a route's WebSockets get (track and inspect relays)."""

    max_message_size: int = 0  # 0 = no limit
    max_frame_size: int = 0  # 0 = no limit
    validate_utf8: bool = False


def ws_limits(route: RouteConfig, pool: PoolConfig | None) -> WsLimits:
    """A route's WebSocket limits: each the route's own, else its pool's."""
    d = defaults(PoolConfig)

    def pick(name: str):
        own = getattr(route, name)
        if own is not None:
            return own
        return getattr(pool, name) if pool is not None else d[name]

    return WsLimits(pick("max_message_size"), pick("max_frame_size"), pick("validate_utf8"))


def effective_ws_limits(config: Config, route: RouteConfig) -> WsLimits:
    """A route's WebSocket limits, its pool looked up in ``config``."""
    return ws_limits(route, config.pools.get(route.pool))


def effective_proxy_protocol(listener: ListenerConfig, pool: PoolConfig) -> str | None:
    """The PROXY header version sent to this pool's members from this listener: the
    listener's own setting wins over the pool's; None = no header."""
    return listener.proxy_protocol or pool.proxy_protocol


def defaults(cls: type) -> dict[str, Any]:
    """The declared defaults of a config dataclass, by field name (fields without one are left out).

    Read through ``fields()`` because slotted dataclasses do not keep defaults as class attributes.
    """
    found: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            found[f.name] = f.default
        elif f.default_factory is not MISSING:
            found[f.name] = f.default_factory()
    return found
