"""site.conf -> Config: tomllib gives a raw dict, the readers here check it table by table.

Nothing stops at the first problem: every reader records its errors and carries on with a
default, so ``wsproxy check`` lists all of them at once. Cross-section checks and the
"not supported yet" list live in ``validate.py``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from types import MappingProxyType
from typing import Any, Callable, Iterable

from wsproxy.config import units
from wsproxy.config.schema import (
    Address,
    CertConfig,
    Config,
    HealthConfig,
    HstsConfig,
    ListenerConfig,
    MemberConfig,
    MemberTlsConfig,
    PersistConfig,
    PluginConfig,
    PoolConfig,
    QueueConfig,
    RateConfig,
    RebalanceConfig,
    ReconnectConfig,
    RouteConfig,
    ServerConfig,
    TlsConfig,
    defaults,
)
from wsproxy.config.validate import (
    check_config,
    closest,
    describe,
    did_you_mean,
    key,
    one_of,
    quote,
    unknown_key,
)
from wsproxy.errors import ConfigError, ConfigErrors

# The keys each table accepts, in the order the errors list them.
TOP_LEVEL_TABLES = ("server", "listeners", "pools", "plugins")
SERVER_KEYS = ("workers", "admin", "log_level", "log_format", "access_log", "state", "grace", "drain_timeout",
               "close_spread")
LISTENER_KEYS = (
    "bind", "mode", "routes", "pool", "trusted_proxies", "head_timeout", "keepalive_timeout",
    "max_head_bytes", "max_headers", "max_uri_bytes", "tls", "redirect_https", "proxy_protocol",
    "accept_proxy", "idle_timeout", "max_conns", "max_conns_per_ip", "handshake_rate_per_ip",
    "hsts",
)
ROUTE_KEYS = ("host", "path", "path_prefix", "pool", "allowed_origins", "relay", "ws_idle_timeout",
              "ping_interval", "pong_timeout", "reconnect", "max_message_size", "max_frame_size", "validate_utf8")
POOL_KEYS = (
    "balance", "hash_key", "members", "max_conns", "hash_fallback", "queue", "persist", "health",
    "proxy_protocol", "relay",
    "connect_timeout", "response_timeout", "retries", "fail_threshold", "down_time",
    "keepalive_conns", "keepalive_timeout", "ws_idle_timeout", "down_time_max", "slow_start", "drain_spread",
    "rebalance", "ping_interval", "pong_timeout", "reconnect", "tls", "max_message_size", "max_frame_size",
    "validate_utf8",
)
MEMBER_KEYS = ("addr", "weight", "max_conns")
TLS_KEYS = ("cert", "key", "certs", "handshake_timeout", "min_version", "ciphers")
TLS_CERT_KEYS = ("cert", "key", "names")
TLS_VERSIONS = ("1.2", "1.3")
HSTS_KEYS = ("max_age", "include_subdomains", "preload")
MEMBER_TLS_KEYS = ("ca", "verify", "sni", "cert", "key")
PERSIST_KEYS = ("cookie", "secret", "max_age")
QUEUE_KEYS = ("size", "timeout")
HEALTH_KEYS = ("type", "path", "interval", "timeout", "rise", "fall", "status", "jitter")
REBALANCE_KEYS = ("threshold", "rate", "max_fraction", "order", "auto")
REBALANCE_ORDERS = ("oldest", "random")
RECONNECT_KEYS = ("deadline", "buffer")
RATE_KEYS = ("rate", "burst")
PLUGIN_KEYS = ("path", "listeners", "options", "on_error", "runtime", "limits")
PLUGIN_LIMIT_KEYS = ("memory", "instructions", "timeout")

# Every value the schema understands; some are refused later by validate.NOT_SUPPORTED_YET.
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MODES = ("http", "tcp")
BALANCES = ("round_robin", "least_conn", "random_two", "hash")
HASH_FALLBACKS = ("round_robin", "least_conn", "random_two")
RELAYS = ("raw", "track", "inspect")
PROXY_PROTOCOLS = ("v1", "v2")
HEALTH_TYPES = ("tcp", "http", "ws")

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HASH_KEY = re.compile(r"source_ip|path|(header|cookie|query):(.+)")
_ORIGIN = re.compile(r"(https?)://(\*\.)?(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+)(:\d{1,5})?", re.IGNORECASE)

_MISSING = object()


# --- public entry points ---------------------------------------------------------------


def load_config(path: str) -> Config:
    """Read and validate a site.conf; raises ConfigErrors listing every problem found."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigErrors([ConfigError("", f"cannot read the config file: {reason}")], path) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        message = f"the file is not valid UTF-8 (byte {exc.start})"
        raise ConfigErrors([ConfigError("", message)], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([_syntax_error(exc)], path) from None
    return parse_config(data, path)


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document; raises ConfigErrors listing every problem."""
    reader = _Reader()
    if not isinstance(data, dict):
        raise ConfigErrors([ConfigError("", f"expected a TOML document (a table), got {describe(data)}")], source)
    _check_top_level(reader, data)
    config = Config(
        server=_read_server(reader, data.get("server", {})),
        listeners=_read_listeners(reader, data.get("listeners", _MISSING)),
        pools=_read_pools(reader, data.get("pools", {})),
        plugins=_read_plugins(reader, data.get("plugins", [])),
        source=source,
    )
    reader.errors.extend(check_config(config))
    if reader.errors:
        raise ConfigErrors(reader.errors, source)
    return config


def _syntax_error(exc: tomllib.TOMLDecodeError) -> ConfigError:
    """tomllib says "Invalid value (at line 3, column 9)"; keep where, lead with what."""
    text = str(exc)
    match = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", text, re.DOTALL)
    what, where = (match.group(1), match.group(2)) if match else (text, None)
    error = ConfigError("", f"TOML syntax error at {where}: {what}" if where else f"TOML syntax error: {what}")
    numbers = re.fullmatch(r"line (\d+), column (\d+)", where or "")
    error.line, error.column = (int(numbers[1]), int(numbers[2])) if numbers else (None, None)
    return error


# --- the reader: typed lookups that record errors instead of raising -----------------


class _Reader:
    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigError(path, message))

    def table(self, value: Any, path: str, expected: str = "a table") -> dict | None:
        if isinstance(value, dict):
            return value
        self.error(path, f"expected {expected}, got {describe(value)}")
        return None

    def known_keys(self, table: dict, path: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name in table:
            if name not in allowed:
                self.error(key(path, name), unknown_key(name, allowed))

    def value(self, table: dict, name: str, path: str, convert: Callable[[Any], Any],
              default: Any = None, *, required: str | None = None) -> Any:
        """``convert(table[name])``, or ``default`` when the key is absent or wrong (recorded).

        ``required`` says what was expected, and makes an absent key an error.
        """
        raw = table.get(name, _MISSING)
        if raw is _MISSING:
            if required is not None:
                self.error(key(path, name), f"missing; expected {required}")
            return default
        try:
            return convert(raw)
        except ValueError as exc:
            self.error(key(path, name), str(exc))
            return default

    def items(self, table: dict, name: str, path: str, convert: Callable[[Any], Any],
              default: Any = None) -> tuple | None:
        """An array whose items each go through ``convert``; bad items are reported by index."""
        raw = table.get(name, _MISSING)
        if raw is _MISSING:
            return default
        if not isinstance(raw, (list, tuple)):
            self.error(key(path, name), f"expected an array, got {describe(raw)}")
            return default
        good = []
        for i, item in enumerate(raw):
            try:
                good.append(convert(item))
            except ValueError as exc:
                self.error(f"{key(path, name)}[{i}]", str(exc))
        return tuple(good)


# --- converters: raw TOML value -> checked value, or ValueError("expected ..., got ...") -


def _string(example: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string like {quote(example)}, got {describe(value)}")
        if not value.strip():
            raise ValueError(f"expected a string like {quote(example)}, got an empty string")
        return value
    return convert


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected {one_of(choices)}, got {describe(value)}")
        if value not in choices:
            raise ValueError(f"expected {one_of(choices)}, got {quote(value)}{did_you_mean(value, choices)}")
        return value
    return convert


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {describe(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            limit = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise ValueError(f"expected an integer {limit}, got {value}")
        return value
    return convert


def _fraction(minimum: float, maximum: float) -> Callable[[Any], float]:
    """A number (integer or float) within [minimum, maximum]."""
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number from {minimum:g} to {maximum:g}, got {describe(value)}")
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a number from {minimum:g} to {maximum:g}, got {value:g}")
        return float(value)
    return convert


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def _duration(allow_zero: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if not isinstance(value, str):
            raise ValueError(f'expected a string like "5s", got {describe(value)}')
        seconds = units.parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise ValueError(f"expected a duration above zero, got {quote(value)}")
        return seconds
    return convert


def _size(minimum: int = 1) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f'expected a size like "64KiB" or a number of bytes, got {describe(value)}')
        size = units.parse_size(value)
        if size < minimum:
            raise ValueError(f"expected a size of at least {minimum} bytes, got {describe(value)}")
        return size
    return convert


def _address(value: Any) -> Address:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "127.0.0.1:8080", got {describe(value)}')
    return units.parse_address(value)


def _name_ref(kind: str, example: str) -> Callable[[Any], str]:
    """A reference to a pool or listener by name (whether it exists is checked in validate)."""
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected the name of a {kind}, like {quote(example)}, got {describe(value)}")
        return value
    return convert


def _url_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a string starting with "/", like "/live/", got {describe(value)}')
    if not value.startswith("/"):
        raise ValueError(f'expected a path starting with "/", got {quote(value)}')
    if "?" in value or "#" in value:
        raise ValueError(f"expected a path without a query or fragment, got {quote(value)}")
    return value


def _route_host(value: Any) -> str:
    """Exact host, or "*.example.com"; IPv6 literals with or without brackets; never a port."""
    like = 'expected a host name like "chat.example.com" or "*.example.com"'
    if not isinstance(value, str):
        raise ValueError(f"{like}, got {describe(value)}")
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if _is_ip(bare):
        return value
    name = bare[:-1] if bare.endswith(".") else bare
    if name == "*":
        raise ValueError('"*" is not a host pattern; omit host to match every host')
    if name.startswith("*."):
        name = name[2:]
    if ":" in name:
        raise ValueError(f"expected a host without a port (the listener fixes the port), got {quote(value)}")
    if "*" in name:
        raise ValueError(f'a wildcard is only allowed as the first label ("*.example.com"), got {quote(value)}')
    if not units.is_host_name(name):
        raise ValueError(f"{like}, got {quote(value)}")
    return value


def _origin(value: Any) -> str:
    like = 'expected an origin like "https://example.com" or "https://*.example.com"'
    if not isinstance(value, str):
        raise ValueError(f"{like}, got {describe(value)}")
    if value.lower() == "null":
        # The opaque origin (sandboxed frames, file: pages): an explicit opt-in, since any
        # site can make one (README, Security).
        return "null"
    match = _ORIGIN.fullmatch(value)
    if match is None:
        raise ValueError(f"{like} (scheme://host[:port], no path), got {quote(value)}")
    host = match.group(3)
    if host.startswith("["):
        if match.group(2) or not _is_ip(host[1:-1]):
            raise ValueError(f"{like}, got {quote(value)}")
    elif not units.is_host_name(host):
        raise ValueError(f"{like}, got {quote(value)}")
    if match.group(4) and not 1 <= int(match.group(4)[1:]) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {quote(value)}")
    return value.lower()  # browsers send scheme and host in lower case


def _cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a string like "10.0.0.0/8", got {describe(value)}')
    return units.parse_cidr(value)


def _https_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https://[^/\s]+(/\S*)?", value):
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected a URL like "https://example.com", got {shown}')
    return value


def _state_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"rediss?://\S+", value):
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected a URL like "redis://127.0.0.1:6379/0", got {shown}')
    return value


def _workers(value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected an integer 1 or more, or "auto", got {shown}')
    return value


def _hash_key(value: Any) -> str:
    like = 'expected "source_ip", "path", "header:NAME", "cookie:NAME" or "query:NAME"'
    if not isinstance(value, str) or not _HASH_KEY.fullmatch(value):
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"{like}, got {shown}")
    return value


def _plugin_path(value: Any) -> str:
    if not isinstance(value, str) or not value.endswith((".lua", ".py")) or len(value) <= 4:
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected a .lua or .py file like "plugins/route_by_header.lua", got {shown}')
    return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- the sections ----------------------------------------------------------------------


def _check_top_level(r: _Reader, data: dict) -> None:
    for name in data:
        if name in TOP_LEVEL_TABLES:
            continue
        if name in SERVER_KEYS:
            r.error(name, f"unknown top-level key {quote(name)}; it belongs in [server]")
            continue
        close = closest(name, TOP_LEVEL_TABLES)
        if close:
            r.error(name, f"unknown table [{name}]; did you mean [{close}]?")
        else:
            r.error(name, f"unknown table [{name}]; expected one of: {', '.join(TOP_LEVEL_TABLES)}")


def _read_server(r: _Reader, raw: Any) -> ServerConfig:
    d = defaults(ServerConfig)
    table = r.table(raw, "server", "a [server] table")
    if table is None:
        return ServerConfig()
    r.known_keys(table, "server", SERVER_KEYS)
    return ServerConfig(
        workers=r.value(table, "workers", "server", _workers, d["workers"]),
        admin=r.value(table, "admin", "server", _address, d["admin"]),
        log_level=r.value(table, "log_level", "server", _choice(LOG_LEVELS), d["log_level"]),
        log_format=r.value(table, "log_format", "server", _choice(LOG_FORMATS), d["log_format"]),
        access_log=r.value(table, "access_log", "server", _boolean, d["access_log"]),
        state=r.value(table, "state", "server", _state_url, d["state"]),
        grace=r.value(table, "grace", "server", _duration(allow_zero=True), d["grace"]),
        drain_timeout=r.value(table, "drain_timeout", "server", _duration(allow_zero=True), d["drain_timeout"]),
        close_spread=r.value(table, "close_spread", "server", _duration(allow_zero=True), d["close_spread"]),
    )


def _named_tables(r: _Reader, raw: Any, section: str, example: str) -> dict[str, dict]:
    """``[listeners.NAME]`` / ``[pools.NAME]``: the sub-tables with acceptable names, in file order."""
    if isinstance(raw, list):
        r.error(section, f"expected tables like [{section}.{example}], got an array (write [{section}.NAME], "
                         f"not [[{section}]])")
        return {}
    table = r.table(raw, section, f"tables like [{section}.{example}]")
    if table is None:
        return {}
    found = {}
    for name, value in table.items():
        path = key(section, name)
        if not _NAME.fullmatch(name):
            r.error(path, 'expected a name of letters, digits, "_" and "-"')
            continue
        sub = r.table(value, path, f"a table [{path}]")
        if sub is not None:
            found[name] = sub
    return found


def _read_listeners(r: _Reader, raw: Any) -> dict[str, ListenerConfig]:
    if raw is _MISSING:
        r.error("listeners", "missing; expected at least one listener, like [listeners.public]")
        return {}
    tables = _named_tables(r, raw, "listeners", "public")
    if not tables and isinstance(raw, dict) and not raw:
        r.error("listeners", "empty; expected at least one listener, like [listeners.public]")
    return {name: _read_listener(r, name, table) for name, table in tables.items()}


def _read_listener(r: _Reader, name: str, table: dict) -> ListenerConfig:
    d = defaults(ListenerConfig)
    path = key("listeners", name)
    r.known_keys(table, path, LISTENER_KEYS)
    bind = r.value(table, "bind", path, _address, required='an address like "127.0.0.1:8080"')
    mode = r.value(table, "mode", path, _choice(MODES), d["mode"])
    # With a bad mode (already reported) the mode-specific checks below would only add noise.
    mode_ok = table.get("mode", d["mode"]) == mode
    routes: tuple[RouteConfig, ...] = ()
    pool = None
    if not mode_ok:
        routes = _read_routes(r, table, path, name) if "routes" in table else ()
    elif mode == "http":
        routes = _read_routes(r, table, path, name)
        if "pool" in table:
            r.error(f"{path}.pool", 'only tcp listeners name a pool; an http listener sends requests to pools '
                                    'through its routes')
    else:
        pool = r.value(table, "pool", path, _name_ref("pool", "tcpecho"),
                       required='the name of a pool, like "tcpecho" (tcp listeners name one pool)')
        for http_only in ("routes", "redirect_https", "handshake_rate_per_ip"):
            if http_only in table:
                r.error(f"{path}.{http_only}", f'only applies to mode = "http"; this listener is mode = {quote(mode)}')
    if mode_ok and mode == "http" and "idle_timeout" in table:
        r.error(f"{path}.idle_timeout", 'only applies to mode = "tcp"; http listeners have keepalive_timeout, '
                                        "and WebSockets ws_idle_timeout (on the route or pool)")
    accept_proxy = r.value(table, "accept_proxy", path, _boolean, d["accept_proxy"])
    trusted_proxies = r.items(table, "trusted_proxies", path, _cidr, d["trusted_proxies"])
    if accept_proxy and table.get("trusted_proxies", []) == []:
        r.error(f"{path}.accept_proxy", "a PROXY header is only read from trusted peers; expected "
                                        'trusted_proxies = ["10.0.0.0/8", ...] on this listener too')
    return ListenerConfig(
        name=name,
        bind=bind,
        mode=mode,
        routes=routes,
        pool=pool,
        trusted_proxies=trusted_proxies,
        head_timeout=r.value(table, "head_timeout", path, _duration(), d["head_timeout"]),
        keepalive_timeout=r.value(table, "keepalive_timeout", path, _duration(allow_zero=True),
                                  d["keepalive_timeout"]),
        max_head_bytes=r.value(table, "max_head_bytes", path, _size(minimum=1), d["max_head_bytes"]),
        max_headers=r.value(table, "max_headers", path, _integer(1), d["max_headers"]),
        max_uri_bytes=r.value(table, "max_uri_bytes", path, _size(minimum=1), d["max_uri_bytes"]),
        tls=_read_tls(r, table, path),
        hsts=_read_hsts(r, table, path, mode),
        redirect_https=r.value(table, "redirect_https", path, _https_url) if mode == "http" else None,
        proxy_protocol=r.value(table, "proxy_protocol", path, _choice(PROXY_PROTOCOLS)),
        accept_proxy=accept_proxy,
        idle_timeout=r.value(table, "idle_timeout", path, _duration(), d["idle_timeout"]),
        max_conns=r.value(table, "max_conns", path, _integer(0), d["max_conns"]),
        max_conns_per_ip=r.value(table, "max_conns_per_ip", path, _integer(0), d["max_conns_per_ip"]),
        handshake_rate_per_ip=_read_rate(r, table, path, "handshake_rate_per_ip") if mode == "http" else None,
    )


def _read_rate(r: _Reader, table: dict, path: str, name: str) -> RateConfig | None:
    """A token bucket ``{ rate = 20, burst = 40 }`` (per second); absent = off."""
    if name not in table:
        return None
    rate_path = f"{path}.{name}"
    raw = r.table(table[name], rate_path, "a table like { rate = 20, burst = 40 } (per second)")
    if raw is None:
        return None
    d = defaults(RateConfig)
    r.known_keys(raw, rate_path, RATE_KEYS)
    return RateConfig(
        rate=r.value(raw, "rate", rate_path, _fraction(0.001, 1000000.0), d["rate"]),
        burst=r.value(raw, "burst", rate_path, _integer(1), d["burst"]),
    )


def _read_routes(r: _Reader, table: dict, path: str, listener: str) -> tuple[RouteConfig, ...]:
    raw = table.get("routes", _MISSING)
    example = 'routes = [{ path_prefix = "/live/", pool = "chat" }, { pool = "web" }]'
    if raw is _MISSING:
        r.error(f"{path}.routes", f"missing; an http listener needs routes, like {example}")
        return ()
    if not isinstance(raw, (list, tuple)):
        r.error(f"{path}.routes", f"expected an array of route tables, like {example}, got {describe(raw)}")
        return ()
    if not raw:
        r.error(f"{path}.routes", 'empty; expected at least one route, like { pool = "web" }')
    routes = []
    for index, item in enumerate(raw):
        route_path = f"{path}.routes[{index}]"
        route_table = r.table(item, route_path, 'a route table like { path_prefix = "/live/", pool = "chat" }')
        if route_table is not None:
            routes.append(_read_route(r, route_table, route_path, index, listener))
    return tuple(routes)


def _read_route(r: _Reader, table: dict, path: str, index: int, listener: str) -> RouteConfig:
    r.known_keys(table, path, ROUTE_KEYS)
    if "path" in table and "path_prefix" in table:
        r.error(f"{path}.path_prefix", "a route has path or path_prefix, not both")
    return RouteConfig(
        index=index,
        pool=r.value(table, "pool", path, _name_ref("pool", "web"), "",
                     required='the name of the pool this route sends to, like "web"'),
        host=r.value(table, "host", path, _route_host),
        path=r.value(table, "path", path, _url_path),
        path_prefix=r.value(table, "path_prefix", path, _url_path),
        allowed_origins=r.items(table, "allowed_origins", path, _origin, ()),
        relay=r.value(table, "relay", path, _choice(RELAYS)),
        ws_idle_timeout=r.value(table, "ws_idle_timeout", path, _duration()),
        ping_interval=r.value(table, "ping_interval", path, _duration(allow_zero=True)),
        pong_timeout=r.value(table, "pong_timeout", path, _duration()),
        reconnect=_read_reconnect(r, table, path),
        max_message_size=r.value(table, "max_message_size", path, _size(minimum=0)),
        max_frame_size=r.value(table, "max_frame_size", path, _size(minimum=0)),
        validate_utf8=r.value(table, "validate_utf8", path, _boolean),
        listener=listener,
    )


def _read_tls(r: _Reader, table: dict, path: str) -> TlsConfig | None:
    """A listener's ``tls``: ``{ cert, key }``, and/or ``certs = [{ cert, key, names }]`` (SNI).
    The files themselves are loaded in validate.py (wsproxy/tls.py)."""
    if "tls" not in table:
        return None
    tls_path = f"{path}.tls"
    tls = r.table(table["tls"], tls_path, 'a table like { cert = "site.pem", key = "site.key" }')
    if tls is None:
        return None
    d = defaults(TlsConfig)
    r.known_keys(tls, tls_path, TLS_KEYS)
    if "redirect_https" in table and _valid(_https_url, table["redirect_https"]):  # a bad one is reported already
        r.error(f"{path}.redirect_https", "a TLS listener serves https itself; redirect_https belongs on a "
                                          "plain listener (expected one of tls or redirect_https)")
    cert = private_key = None
    if "certs" not in tls or "cert" in tls or "key" in tls:
        cert = r.value(tls, "cert", tls_path, _string("site.pem"), required='a PEM file like "site.pem"')
        private_key = r.value(tls, "key", tls_path, _string("site.key"), required='a PEM file like "site.key"')
    certs = _read_tls_certs(r, tls, tls_path)
    result = TlsConfig(
        cert=cert,
        key=private_key,
        certs=certs,
        handshake_timeout=r.value(tls, "handshake_timeout", tls_path, _duration(), d["handshake_timeout"]),
        min_version=r.value(tls, "min_version", tls_path, _tls_version, d["min_version"]),
        ciphers=r.value(tls, "ciphers", tls_path, _string("ECDHE+AESGCM"), d["ciphers"]),
    )
    return result if (cert and private_key) or certs else None


def _read_tls_certs(r: _Reader, tls: dict, tls_path: str) -> tuple[CertConfig, ...]:
    raw = tls.get("certs", _MISSING)
    example = 'certs = [{ cert = "a.pem", key = "a.key", names = ["a.example.com"] }]'
    if raw is _MISSING:
        return ()
    if not isinstance(raw, (list, tuple)) or not raw:
        shown = "an empty array" if isinstance(raw, (list, tuple)) else describe(raw)
        r.error(f"{tls_path}.certs", f"expected an array of certificates, like {example}, got {shown}")
        return ()
    certs = []
    for index, item in enumerate(raw):
        entry_path = f"{tls_path}.certs[{index}]"
        entry = r.table(item, entry_path, '{ cert = "a.pem", key = "a.key", names = ["a.example.com"] }')
        if entry is None:
            continue
        r.known_keys(entry, entry_path, TLS_CERT_KEYS)
        cert = r.value(entry, "cert", entry_path, _string("a.pem"), required='a PEM file like "a.pem"')
        private_key = r.value(entry, "key", entry_path, _string("a.key"), required='a PEM file like "a.key"')
        names = r.items(entry, "names", entry_path, _sni_name, ())
        if entry.get("names") == []:
            r.error(f"{entry_path}.names", "empty; expected names like [\"a.example.com\", \"*.example.com\"], "
                                           "or no names (the certificate's own DNS names)")
        if cert and private_key:
            certs.append(CertConfig(cert, private_key, names or ()))
    return tuple(certs)


def _sni_name(value: Any) -> str:
    """An SNI name a certificate is chosen for: "a.example.com" or "*.example.com" (lowercased)."""
    like = 'expected a host name like "a.example.com" or "*.example.com"'
    if not isinstance(value, str):
        raise ValueError(f"{like}, got {describe(value)}")
    name = value.lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    if _is_ip(bare) or _is_ip(bare.strip("[]")):
        raise ValueError(f"clients send no IP address in SNI; {like}, got {quote(value)}")
    if "*" in bare or not units.is_host_name(bare) or "." not in bare and name.startswith("*."):
        raise ValueError(f'{like} (a wildcard only as the whole first label), got {quote(value)}')
    return name


def _valid(convert: Callable[[Any], Any], value: Any) -> bool:
    try:
        convert(value)
    except ValueError:
        return False
    return True


def _tls_version(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        value = f"{value:g}"  # min_version = 1.2 (a TOML float) means "1.2"
    return _choice(TLS_VERSIONS)(value)


def _read_hsts(r: _Reader, table: dict, path: str, mode: str) -> HstsConfig | None:
    """``hsts = true`` (max_age 365d) or ``hsts = { max_age, include_subdomains, preload }``."""
    if "hsts" not in table:
        return None
    hsts_path = f"{path}.hsts"
    raw = table["hsts"]
    if "tls" not in table:
        r.error(hsts_path, "only applies to a TLS listener (one with tls = { cert, key }); browsers ignore "
                           "Strict-Transport-Security over plain http")
        return None
    if mode != "http":
        r.error(hsts_path, f'only applies to mode = "http"; this listener is mode = {quote(mode)}')
        return None
    if isinstance(raw, bool):
        return HstsConfig() if raw else None
    hsts = r.table(raw, hsts_path, 'true, or a table like { max_age = "365d", include_subdomains = true }')
    if hsts is None:
        return None
    d = defaults(HstsConfig)
    r.known_keys(hsts, hsts_path, HSTS_KEYS)
    result = HstsConfig(
        max_age=r.value(hsts, "max_age", hsts_path, _duration(allow_zero=True), d["max_age"]),
        include_subdomains=r.value(hsts, "include_subdomains", hsts_path, _boolean, d["include_subdomains"]),
        preload=r.value(hsts, "preload", hsts_path, _boolean, d["preload"]),
    )
    if result.preload and (not result.include_subdomains or result.max_age < 31536000):
        r.error(f"{hsts_path}.preload", "the preload list (hstspreload.org) requires include_subdomains = true "
                                        'and max_age of at least "365d"')
    return result


def _read_member_tls(r: _Reader, table: dict, path: str) -> MemberTlsConfig | None:
    """A pool's ``tls``: ``true`` (verify with the system CAs) or ``{ ca, verify, sni, cert, key }``."""
    if "tls" not in table:
        return None
    tls_path = f"{path}.tls"
    raw = table["tls"]
    if isinstance(raw, bool):
        return MemberTlsConfig() if raw else None
    tls = r.table(raw, tls_path, 'true, or a table like { ca = "members-ca.pem", sni = "api.internal" }')
    if tls is None:
        return None
    d = defaults(MemberTlsConfig)
    r.known_keys(tls, tls_path, MEMBER_TLS_KEYS)
    cert = r.value(tls, "cert", tls_path, _string("client.pem"))
    private_key = r.value(tls, "key", tls_path, _string("client.key"))
    if cert and not private_key and "key" not in tls:
        r.error(f"{tls_path}.key", 'missing; a client certificate needs its key, like key = "client.key"')
    elif private_key and not cert and "cert" not in tls:
        r.error(f"{tls_path}.cert", 'missing; a client key needs its certificate, like cert = "client.pem"')
    verify = r.value(tls, "verify", tls_path, _boolean, d["verify"])
    if not verify and "ca" in tls:
        r.error(f"{tls_path}.ca", "verify = false checks nothing, so a CA is not used; expected no ca, or "
                                  "verify = true")
    return MemberTlsConfig(
        ca=r.value(tls, "ca", tls_path, _string("members-ca.pem"), d["ca"]),
        verify=verify,
        sni=r.value(tls, "sni", tls_path, _member_sni, d["sni"]),
        cert=cert,
        key=private_key,
    )


def _member_sni(value: Any) -> str:
    """The name sent in SNI to members and checked against their certificate."""
    if not isinstance(value, str) or not units.is_host_name(value.rstrip(".")) or _is_ip(value):
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected a host name like "api.internal", got {shown}')
    return value.lower().rstrip(".")


def _read_pools(r: _Reader, raw: Any) -> dict[str, PoolConfig]:
    tables = _named_tables(r, raw, "pools", "web")
    return {name: _read_pool(r, name, table) for name, table in tables.items()}


def _read_pool(r: _Reader, name: str, table: dict) -> PoolConfig:
    d = defaults(PoolConfig)
    path = key("pools", name)
    r.known_keys(table, path, POOL_KEYS)
    balance = r.value(table, "balance", path, _choice(BALANCES), d["balance"])
    hash_key = r.value(table, "hash_key", path, _hash_key)
    if balance == "hash" and hash_key is None and "hash_key" not in table:
        hash_key = "source_ip"  # hashing by client address is the common case
    elif balance != "hash" and "hash_key" in table and table.get("balance", balance) == balance:
        r.error(f"{path}.hash_key", f'only applies to balance = "hash"; this pool is balance = {quote(balance)}')
    hash_fallback = r.value(table, "hash_fallback", path, _choice(HASH_FALLBACKS), d["hash_fallback"])
    if balance != "hash" and "hash_fallback" in table and table.get("balance", balance) == balance:
        r.error(f"{path}.hash_fallback", f'only applies to balance = "hash"; this pool is balance = {quote(balance)}')
    max_conns = r.value(table, "max_conns", path, _integer(1), d["max_conns"])
    return PoolConfig(
        name=name,
        balance=balance,
        hash_key=hash_key,
        hash_fallback=hash_fallback,
        queue=_read_queue(r, table, path),
        members=_read_members(r, table, path, max_conns),
        max_conns=max_conns,
        persist=_read_persist(r, table, path),
        health=_read_health(r, table, path),
        proxy_protocol=r.value(table, "proxy_protocol", path, _choice(PROXY_PROTOCOLS)),
        relay=r.value(table, "relay", path, _choice(RELAYS), d["relay"]),
        connect_timeout=r.value(table, "connect_timeout", path, _duration(), d["connect_timeout"]),
        response_timeout=r.value(table, "response_timeout", path, _duration(), d["response_timeout"]),
        retries=r.value(table, "retries", path, _integer(0), d["retries"]),
        fail_threshold=r.value(table, "fail_threshold", path, _integer(1), d["fail_threshold"]),
        down_time=r.value(table, "down_time", path, _duration(allow_zero=True), d["down_time"]),
        keepalive_conns=r.value(table, "keepalive_conns", path, _integer(0), d["keepalive_conns"]),
        keepalive_timeout=r.value(table, "keepalive_timeout", path, _duration(allow_zero=True),
                                  d["keepalive_timeout"]),
        ws_idle_timeout=r.value(table, "ws_idle_timeout", path, _duration(), d["ws_idle_timeout"]),
        down_time_max=r.value(table, "down_time_max", path, _duration(allow_zero=True), d["down_time_max"]),
        slow_start=r.value(table, "slow_start", path, _duration(allow_zero=True), d["slow_start"]),
        drain_spread=r.value(table, "drain_spread", path, _duration(allow_zero=True), d["drain_spread"]),
        rebalance=_read_rebalance(r, table, path),
        ping_interval=r.value(table, "ping_interval", path, _duration(allow_zero=True), d["ping_interval"]),
        pong_timeout=r.value(table, "pong_timeout", path, _duration(), d["pong_timeout"]),
        reconnect=_read_reconnect(r, table, path),
        tls=_read_member_tls(r, table, path),
        max_message_size=r.value(table, "max_message_size", path, _size(minimum=0), d["max_message_size"]),
        max_frame_size=r.value(table, "max_frame_size", path, _size(minimum=0), d["max_frame_size"]),
        validate_utf8=r.value(table, "validate_utf8", path, _boolean, d["validate_utf8"]),
    )


def _read_members(r: _Reader, table: dict, path: str, pool_max_conns: int) -> tuple[MemberConfig, ...]:
    raw = table.get("members", _MISSING)
    example = 'members = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 2 }]'
    if raw is _MISSING:
        r.error(f"{path}.members", f"missing; expected a list of members, like {example}")
        return ()
    if not isinstance(raw, (list, tuple)):
        r.error(f"{path}.members", f"expected an array of members, like {example}, got {describe(raw)}")
        return ()
    if not raw:
        r.error(f"{path}.members", f"empty; a pool needs at least one member, like {example}")
    members: list[MemberConfig] = []
    first_index: dict[Address, int] = {}
    for index, item in enumerate(raw):
        member_path = f"{path}.members[{index}]"
        member = _read_member(r, item, member_path, pool_max_conns)
        if member is None:
            continue
        if member.addr in first_index:
            r.error(member_path, f"{member.addr} is already members[{first_index[member.addr]}] of this pool; "
                                 "expected each address once (use weight to send it more)")
            continue
        first_index[member.addr] = index
        members.append(member)
    return tuple(members)


def _read_member(r: _Reader, item: Any, path: str, pool_max_conns: int) -> MemberConfig | None:
    """A member is "host:port" or { addr, weight, max_conns }."""
    if isinstance(item, str):
        try:
            return MemberConfig(units.parse_address(item), max_conns=pool_max_conns)
        except ValueError as exc:
            r.error(path, str(exc))
            return None
    table = r.table(item, path, 'a member like "127.0.0.1:9001" or { addr = "127.0.0.1:9001", weight = 2 }')
    if table is None:
        return None
    r.known_keys(table, path, MEMBER_KEYS)
    addr = r.value(table, "addr", path, _address, required='an address like "127.0.0.1:9001"')
    weight = r.value(table, "weight", path, _integer(1), defaults(MemberConfig)["weight"])
    max_conns = r.value(table, "max_conns", path, _integer(1), pool_max_conns)
    return MemberConfig(addr, weight, max_conns) if addr is not None else None


def _read_persist(r: _Reader, table: dict, path: str) -> PersistConfig | None:
    if "persist" not in table:
        return None
    persist_path = f"{path}.persist"
    persist = r.table(table["persist"], persist_path, 'a table like { cookie = "WSPROXY_SRV" }')
    if persist is None:
        return None
    r.known_keys(persist, persist_path, PERSIST_KEYS)
    cookie = r.value(persist, "cookie", persist_path, _cookie_name, required='a cookie name like "WSPROXY_SRV"')
    secret = r.value(persist, "secret", persist_path, _secret)
    max_age = r.value(persist, "max_age", persist_path, _duration())
    return PersistConfig(cookie, secret, max_age) if cookie else None


def _secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 16:
        shown = "a string of %d characters" % len(value) if isinstance(value, str) else describe(value)
        raise ValueError(f"expected a string of at least 16 characters (a random one, kept secret), got {shown}")
    return value


def _read_queue(r: _Reader, table: dict, path: str) -> QueueConfig:
    d = defaults(QueueConfig)
    if "queue" not in table:
        return QueueConfig()
    queue_path = f"{path}.queue"
    queue = r.table(table["queue"], queue_path, 'a table like { size = 100, timeout = "5s" }')
    if queue is None:
        return QueueConfig()
    r.known_keys(queue, queue_path, QUEUE_KEYS)
    return QueueConfig(
        size=r.value(queue, "size", queue_path, _integer(0), d["size"]),
        timeout=r.value(queue, "timeout", queue_path, _duration(), d["timeout"]),
    )


def _cookie_name(value: Any) -> str:
    if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value):
        shown = quote(value) if isinstance(value, str) else describe(value)
        raise ValueError(f'expected a cookie name like "WSPROXY_SRV", got {shown}')
    return value


def _read_health(r: _Reader, table: dict, path: str) -> HealthConfig | None:
    if "health" not in table:
        return None
    health_path = f"{path}.health"
    health = r.table(table["health"], health_path, 'a table like { type = "tcp", interval = "2s" }')
    if health is None:
        return None
    d = defaults(HealthConfig)
    r.known_keys(health, health_path, HEALTH_KEYS)
    check_type = r.value(health, "type", health_path, _choice(HEALTH_TYPES), required=one_of(HEALTH_TYPES))
    if isinstance(health.get("status"), int) and not isinstance(health.get("status"), bool):
        health = {**health, "status": [health["status"]]}  # status = 204 means [204]
    if check_type != "http" and "status" in health:
        r.error(f"{health_path}.status", 'only applies to type = "http" (a ws check expects the 101)')
    if check_type == "tcp" and "path" in health:
        r.error(f"{health_path}.path", 'only applies to type = "http" or "ws"')
    interval = r.value(health, "interval", health_path, _duration(), d["interval"])
    timeout = r.value(health, "timeout", health_path, _duration(), d["timeout"])
    if timeout > interval:
        r.error(f"{health_path}.timeout", f"{units.format_duration(timeout)} is longer than the interval "
                                          f"({units.format_duration(interval)}); expected at most the interval")
    if check_type is None:
        return None
    return HealthConfig(
        type=check_type,
        path=r.value(health, "path", health_path, _url_path, d["path"]),
        interval=interval,
        timeout=timeout,
        rise=r.value(health, "rise", health_path, _integer(1), d["rise"]),
        fall=r.value(health, "fall", health_path, _integer(1), d["fall"]),
        status=r.items(health, "status", health_path, _integer(100, 599), d["status"]),
        jitter=r.value(health, "jitter", health_path, _fraction(0.0, 0.5), d["jitter"]),
    )


def _read_rebalance(r: _Reader, table: dict, path: str) -> RebalanceConfig | None:
    if "rebalance" not in table:
        return None
    rb_path = f"{path}.rebalance"
    rb = r.table(table["rebalance"], rb_path, 'a table like { threshold = 0.2, rate = 10, max_fraction = 0.5 }')
    if rb is None:
        return None
    d = defaults(RebalanceConfig)
    r.known_keys(rb, rb_path, REBALANCE_KEYS)
    return RebalanceConfig(
        threshold=r.value(rb, "threshold", rb_path, _fraction(0.0, 10.0), d["threshold"]),
        rate=r.value(rb, "rate", rb_path, _fraction(0.001, 100000.0), d["rate"]),
        max_fraction=r.value(rb, "max_fraction", rb_path, _fraction(0.0, 1.0), d["max_fraction"]),
        order=r.value(rb, "order", rb_path, _choice(REBALANCE_ORDERS), d["order"]),
        auto=r.value(rb, "auto", rb_path, _boolean, d["auto"]),
    )


def _read_reconnect(r: _Reader, table: dict, path: str) -> ReconnectConfig | None:
    if "reconnect" not in table:
        return None
    rc_path = f"{path}.reconnect"
    rc = r.table(table["reconnect"], rc_path, 'a table like { deadline = "5s", buffer = "1MiB" }')
    if rc is None:
        return None
    d = defaults(ReconnectConfig)
    r.known_keys(rc, rc_path, RECONNECT_KEYS)
    return ReconnectConfig(
        deadline=r.value(rc, "deadline", rc_path, _duration(), d["deadline"]),
        buffer=r.value(rc, "buffer", rc_path, _size(minimum=1), d["buffer"]),
    )


def _read_plugins(r: _Reader, raw: Any) -> tuple[PluginConfig, ...]:
    if isinstance(raw, dict):
        r.error("plugins", "expected an array of tables [[plugins]], got a table (write [[plugins]], not [plugins])")
        return ()
    if not isinstance(raw, (list, tuple)):
        r.error("plugins", f"expected an array of tables [[plugins]], got {describe(raw)}")
        return ()
    plugins = []
    for index, item in enumerate(raw):
        path = f"plugins[{index}]"
        table = r.table(item, path, 'a [[plugins]] table with path = "plugins/NAME.lua"')
        if table is None:
            continue
        r.known_keys(table, path, PLUGIN_KEYS)
        plugin_path = r.value(table, "path", path, _plugin_path, required='a .lua or .py file like "plugins/x.lua"')
        listeners = r.items(table, "listeners", path, _name_ref("listener", "public"))
        options = r.value(table, "options", path, _options, {})
        on_error = r.value(table, "on_error", path, _choice(("abort", "continue", "disable")), None)
        runtime = r.value(table, "runtime", path, _choice(("lua54", "luajit")), None)
        limits = _read_plugin_limits(r, table, path)
        if runtime is not None and plugin_path is not None and not plugin_path.endswith(".lua"):
            r.error(f"{path}.runtime", "runtime chooses the Lua VM; it applies to .lua plugins only")
        if plugin_path is not None:
            plugins.append(PluginConfig(index, plugin_path, listeners, MappingProxyType(dict(options)),
                                        on_error=on_error, runtime=runtime, limits=MappingProxyType(limits)))
    return tuple(plugins)


def _read_plugin_limits(r: _Reader, table: dict, path: str) -> dict:
    """limits = { memory = "16MiB", instructions = 1000000, timeout = "5s" } (all optional)."""
    raw = table.get("limits")
    if raw is None:
        return {}
    where = f"{path}.limits"
    limits_table = r.table(raw, where, 'a table like { memory = "16MiB", instructions = 1000000 }')
    if limits_table is None:
        return {}
    r.known_keys(limits_table, where, PLUGIN_LIMIT_KEYS)
    limits = {
        "memory": r.value(limits_table, "memory", where, _size(256 * 1024), None),
        "instructions": r.value(limits_table, "instructions", where, _integer(1000), None),
        "timeout": r.value(limits_table, "timeout", where, _duration(), None),
    }
    return {key: value for key, value in limits.items() if value is not None}


def _options(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f'expected a table like {{ header = "X-Tenant" }}, got {describe(value)}')
    return value
