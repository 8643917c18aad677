"""Checks that span sections, the "not supported yet" list, and the wording of errors.

``load.py`` checks each table on its own (types, ranges, unknown keys). What needs the whole
file lives here: routes and tcp listeners naming pools, plugins naming listeners, two
listeners on one address, and features whose keys parse but whose code has not landed.

The checks run on a possibly half-built Config (a bad value is left as None or "" after its
error was recorded), so each one skips values that are already known to be wrong.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from typing import Any, Iterable, Iterator

from wsproxy.config.schema import Address, Config, effective_reconnect, effective_relay
from wsproxy.errors import ConfigError

# Features whose keys are part of site.conf but whose code arrives with a later issue. The
# schema accepts and shape-checks them; a config that uses one is then refused with the
# message below. An issue that lands a feature deletes its entry here (and nothing else).
# "section.key" = the key is set; "section.key=value" = the key has that value.
NOT_SUPPORTED_YET: dict[str, str] = {
    "server.state": (
        "cluster-wide shared state is not supported yet (workers of one node share state in memory); "
        "remove the key"
    ),
}


# --- wording shared by every error ------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def quote(text: str) -> str:
    """A string as TOML would write it: ``"5s"``."""
    return json.dumps(text, ensure_ascii=False)


def key(path: str, name: str) -> str:
    """``key("pools", "chat")`` -> ``"pools.chat"``; odd names are quoted as in TOML."""
    part = name if _BARE_KEY.fullmatch(name) else quote(name)
    return f"{path}.{part}" if path else part


def describe(value: Any) -> str:
    """How an error shows the value it got: ``integer 5``, ``string "x"``, ``table``."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {quote(shown)}"
    if isinstance(value, (list, tuple)):
        return "an empty array" if not value else f"an array of {len(value)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return f"date-time {value.isoformat()}"
    return type(value).__name__


def one_of(choices: Iterable[str]) -> str:
    """``'"a", "b" or "c"'``."""
    quoted = [quote(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word`` (a likely typo of it), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``'; did you mean "balance"?'`` when a choice is close to ``word``, else ``""``."""
    close = closest(word, choices)
    return f"; did you mean {quote(close)}?" if close else ""


def unknown_key(name: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    hint = did_you_mean(name, allowed)
    if hint:
        return f"unknown key {quote(name)}{hint}"
    return f"unknown key {quote(name)}; expected one of: {', '.join(allowed)}"


def no_such(kind: str, name: str, existing: Iterable[str], table: str) -> str:
    """``no pool named "chta"; did you mean "chat"? (pools: chat, web)``."""
    existing = list(existing)
    if not existing:
        return f"no {kind} named {quote(name)}; there are no [{table}.NAME] tables"
    return f"no {kind} named {quote(name)}{did_you_mean(name, existing)} ({table}: {', '.join(existing)})"


# --- whole-file checks ------------------------------------------------------------------


def check_config(config: Config) -> list[ConfigError]:
    """Every cross-section problem, the TLS files (each loaded once), then every use of a
    feature that has not landed yet."""
    return [*_check_references(config), *_check_binds(config), *_check_keepalive(config),
            *_check_ws_limits(config), *_check_reconnect(config), *_check_tls(config),
            *_check_not_supported(config)]


def _check_tls(config: Config) -> list[ConfigError]:
    """Every certificate, key and CA file loaded once into an SSLContext (wsproxy/tls.py),
    so a file that would fail at start or reload fails here, named with its key path."""
    if not any(l.tls for l in config.listeners.values()) and not any(p.tls for p in config.pools.values()):
        return []
    from wsproxy.tls import check_tls  # ssl (and socket) only when TLS is configured

    return check_tls(config, key)


def _check_references(config: Config) -> Iterator[ConfigError]:
    pools = list(config.pools)
    for name, listener in config.listeners.items():
        base = key("listeners", name)
        for route in listener.routes:
            if route.pool and route.pool not in config.pools:
                yield ConfigError(f"{base}.routes[{route.index}].pool", no_such("pool", route.pool, pools, "pools"))
        if listener.pool and listener.pool not in config.pools:
            yield ConfigError(f"{base}.pool", no_such("pool", listener.pool, pools, "pools"))
        elif listener.pool:
            yield from _check_tcp_pool(listener.name, listener.pool, config.pools[listener.pool])

    listeners = list(config.listeners)
    for plugin in config.plugins:
        for i, name in enumerate(plugin.listeners or ()):
            path = f"plugins[{plugin.index}].listeners[{i}]"
            target = config.listeners.get(name)
            if target is None:
                yield ConfigError(path, no_such("listener", name, listeners, "listeners"))
            elif target.mode != "http":
                message = f"listener {quote(name)} is a {target.mode} listener; plugins hook http listeners"
                yield ConfigError(path, message)


def _check_tcp_pool(listener: str, name: str, pool) -> Iterator[ConfigError]:
    """A tcp listener's pool may only use what a byte stream has: no cookies, no headers."""
    base = key("pools", name)
    why = f"tcp listener {quote(listener)} uses this pool, and a tcp connection has no HTTP request"
    if pool.persist is not None:
        yield ConfigError(f"{base}.persist", f"{why}; expected no persist (for stickiness use "
                                             'balance = "hash" with hash_key = "source_ip")')
    if pool.balance == "hash" and pool.hash_key not in (None, "source_ip"):
        yield ConfigError(f"{base}.hash_key", f'{why}; expected "source_ip"')


def _check_keepalive(config: Config) -> Iterator[ConfigError]:
    """A route that asks for keep-alive pings itself cannot be raw: pings go between frames,
    and a raw relay does not see frames. (A pool's ping_interval is only ignored on its raw
    routes, with a warning when the first WebSocket of one opens: proxy/keepalive.py.)"""
    for name, listener in config.listeners.items():
        for route in listener.routes:
            if route.pool not in config.pools or not route.ping_interval:  # None or 0
                continue
            if effective_relay(config, route) == "raw":
                yield ConfigError(f"{key('listeners', name)}.routes[{route.index}].ping_interval",
                                  'keep-alive pings need relay = "track" or "inspect" (a raw relay does '
                                  "not see frames, so it cannot put a ping between two); expected "
                                  "ping_interval = 0 or another relay")


WS_LIMIT_KEYS = ("max_message_size", "max_frame_size", "validate_utf8")


def _check_ws_limits(config: Config) -> Iterator[ConfigError]:
    """A route that sets a WebSocket limit itself cannot be raw: a raw relay does not see
    frames, so it can neither measure messages nor read text. (A pool's limits are only not
    applied on its raw routes, with a warning when the first WebSocket of one opens.)"""
    for name, listener in config.listeners.items():
        for route in listener.routes:
            if route.pool not in config.pools or effective_relay(config, route) != "raw":
                continue
            for field_name in WS_LIMIT_KEYS:
                if getattr(route, field_name):  # None (the pool's), 0 and false ask for nothing
                    yield ConfigError(f"{key('listeners', name)}.routes[{route.index}].{field_name}",
                                      'WebSocket limits need relay = "track" or "inspect" (a raw relay does '
                                      f"not see frames); expected no {field_name} on this route or another relay")


_RECONNECT_RAW = ('reconnect needs relay = "track" (the replay starts at a frame boundary, and a raw '
                  'relay does not see frames); expected no reconnect or relay = "track"')


def _check_reconnect(config: Config) -> Iterator[ConfigError]:
    """Reconnecting the member leg replays client frames from a frame boundary: not on raw."""
    for name, pool in config.pools.items():
        if pool.reconnect is not None and pool.relay == "raw":
            yield ConfigError(f"{key('pools', name)}.reconnect", _RECONNECT_RAW)
    for name, listener in config.listeners.items():
        for route in listener.routes:
            pool = config.pools.get(route.pool)
            if pool is None or effective_reconnect(config, route) is None or effective_relay(config, route) != "raw":
                continue
            if route.reconnect is None and pool.relay == "raw":
                continue  # reported on the pool
            where = "reconnect" if route.reconnect is not None else "relay"
            yield ConfigError(f"{key('listeners', name)}.routes[{route.index}].{where}", _RECONNECT_RAW)


def _binds_overlap(a: Address, b: Address) -> bool:
    """Two binds that cannot both succeed: same port and same host, or a wildcard of the
    same family (asyncio binds IPv6 sockets v6-only, so "::" and "0.0.0.0" can share a port)."""
    if a.port != b.port:
        return False
    if a.host == b.host:
        return True
    for wild, other in ((a.host, b.host), (b.host, a.host)):
        if wild == "0.0.0.0" and ":" not in other:
            return True
        if wild == "::" and ":" in other:
            return True
    return False


def _check_binds(config: Config) -> Iterator[ConfigError]:
    seen: list[tuple[str, Address]] = []
    if config.server.admin is not None:
        seen.append(("server.admin", config.server.admin))
    for name, listener in config.listeners.items():
        if listener.bind is None:  # already reported
            continue
        path = f"{key('listeners', name)}.bind"
        for other_path, other in seen:
            if _binds_overlap(listener.bind, other):
                yield ConfigError(path, f"{listener.bind} overlaps {other_path} ({other}); expected a distinct address")
                break
        seen.append((path, listener.bind))


def _not_supported(feature: str, path: str) -> Iterator[ConfigError]:
    message = NOT_SUPPORTED_YET.get(feature)
    if message is not None:
        yield ConfigError(path, message)


def _check_not_supported(config: Config) -> Iterator[ConfigError]:
    server = config.server
    if server.workers != 1:
        yield from _not_supported("server.workers", "server.workers")
    if server.admin is not None:
        yield from _not_supported("server.admin", "server.admin")
    if server.state is not None:
        yield from _not_supported("server.state", "server.state")

    for name, listener in config.listeners.items():
        base = key("listeners", name)
        if listener.mode != "http":
            yield from _not_supported(f"listener.mode={listener.mode}", f"{base}.mode")
        for field_name in ("tls", "redirect_https", "proxy_protocol"):
            if getattr(listener, field_name) is not None:
                yield from _not_supported(f"listener.{field_name}", f"{base}.{field_name}")
        if listener.accept_proxy:
            yield from _not_supported("listener.accept_proxy", f"{base}.accept_proxy")
        for route in listener.routes:
            if route.relay is not None:
                yield from _not_supported(f"route.relay={route.relay}", f"{base}.routes[{route.index}].relay")

    for name, pool in config.pools.items():
        base = key("pools", name)
        yield from _not_supported(f"pool.balance={pool.balance}", f"{base}.balance")
        yield from _not_supported(f"pool.relay={pool.relay}", f"{base}.relay")
        for field_name in ("persist", "health", "proxy_protocol"):
            if getattr(pool, field_name) is not None:
                yield from _not_supported(f"pool.{field_name}", f"{base}.{field_name}")

