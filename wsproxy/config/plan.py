"""``format_plan(config)``: the text ``wsproxy check`` prints.

One block per listener (its routes, in match order, with the pool and the effective relay
mode each one uses), then one per pool (its policy, timeouts and members), then plugins.
Columns are aligned across the whole plan so a long config still reads as a table.
"""

from __future__ import annotations

from wsproxy.config.schema import (
    Config,
    ListenerConfig,
    PoolConfig,
    RouteConfig,
    effective_relay,
    effective_keepalive,
    effective_reconnect,
    effective_ws_idle_timeout,
    effective_ws_limits,
    ws_limits,
)
from wsproxy.config.units import format_duration as dur
from wsproxy.config.units import format_size as size

Row = list[str]


def format_plan(config: Config, chains: dict | None = None) -> str:
    """The plan ``wsproxy check`` prints. ``chains``: listener -> PluginChain (plugin_setup),
    to show each route's plugins and the relay mode they imply."""
    chains = chains or {}
    lines = [f"config {config.source}", _server_line(config), ""]

    route_rows = {
        name: [_route_row(config, route, chains.get(name)) for route in listener.routes]
        for name, listener in config.listeners.items()
    }
    route_widths = _widths([row for rows in route_rows.values() for row in rows])
    for name, listener in config.listeners.items():
        lines.extend(_listener_block(listener))
        lines.extend("  " + _render(row, route_widths) for row in route_rows[name])
        lines.append("")

    member_rows = {name: [_member_row(m) for m in pool.members] for name, pool in config.pools.items()}
    member_widths = _widths([row for rows in member_rows.values() for row in rows])
    for name, pool in config.pools.items():
        lines.extend(_pool_block(pool))
        lines.extend("  " + _render(row, member_widths) for row in member_rows[name])
        lines.append("")

    if config.plugins:
        lines.append("plugins")
        rows = [_plugin_row(p) for p in config.plugins]
        widths = _widths(rows)
        lines.extend("  " + _render(row, widths) for row in rows)
        lines.append("")

    return "\n".join(lines).rstrip("\n") + "\n"


def _server_line(config: Config) -> str:
    s = config.server
    parts = [
        f"workers {s.workers}",
        f"log {s.log_level} ({s.log_format})",
        f"access_log {'on' if s.access_log else 'off'}",
        f"grace {dur(s.grace)}",
        f"reload drain {dur(s.drain_timeout)} then Close 1001 over {dur(s.close_spread)}",
        f"admin {s.admin}" if s.admin else "admin off",
    ]
    if s.state:
        parts.append(f"state {s.state}")
    return "server  " + "  ".join(parts)


def _listener_block(listener: ListenerConfig) -> list[str]:
    head = f"listener {listener.name}  {listener.bind}  {listener.mode}"
    if listener.tls:
        head += f"  tls {listener.tls.cert or listener.tls.certs[0].cert}"
    if listener.mode == "tcp":
        head += f"  -> pool {listener.pool}  idle {dur(listener.idle_timeout)}"
    if listener.proxy_protocol:
        head += f"  proxy_protocol {listener.proxy_protocol}"
    lines = [head]
    if listener.mode == "http":
        lines.append(
            f"  limits  head {dur(listener.head_timeout)}  keepalive {dur(listener.keepalive_timeout)}"
            f"  max_head {size(listener.max_head_bytes)}  max_headers {listener.max_headers}"
            f"  max_uri {size(listener.max_uri_bytes)}"
        )
    lines.append("  " + _conn_limits(listener))
    if listener.tls:
        lines.append("  " + _tls_text(listener))
    if listener.redirect_https:
        lines.append(f"  redirect_https {listener.redirect_https}")
    if listener.trusted_proxies or listener.accept_proxy:
        trusted = ", ".join(listener.trusted_proxies) or "none"
        accept = "  accept_proxy on" if listener.accept_proxy else ""
        lines.append(f"  trusted_proxies {trusted}{accept}")
    return lines


def _conn_limits(listener: ListenerConfig) -> str:
    """``conns  max 20000  per_ip off  handshakes/ip 20/s burst 40``: per worker process."""
    def limit(n: int) -> str:
        return str(n) if n else "off"
    text = f"conns   max {limit(listener.max_conns)}  per_ip {limit(listener.max_conns_per_ip)}"
    if listener.mode == "http":
        rate = listener.handshake_rate_per_ip
        text += f"  handshakes/ip {f'{rate.rate:g}/s burst {rate.burst}' if rate is not None else 'off'}"
    return text + "  (per worker)"


def _tls_text(listener: ListenerConfig) -> str:
    """``tls  TLS 1.2+  handshake 10s  certs site.pem (default), b.pem [*.b.example]  hsts 365d``."""
    tls = listener.tls
    certs = [f"{tls.cert} (default)"] if tls.cert else []
    for i, entry in enumerate(tls.certs):
        names = ", ".join(entry.names) if entry.names else "its DNS names"
        certs.append(f"{entry.cert} [{names}]" + (" (default)" if i == 0 and not tls.cert else ""))
    text = f"tls     TLS {tls.min_version}+  handshake {dur(tls.handshake_timeout)}  certs {'; '.join(certs)}"
    if tls.ciphers:
        text += f"  ciphers {tls.ciphers}"
    hsts = listener.hsts
    if hsts is not None:
        text += f"  hsts {dur(hsts.max_age)}" + ("  includeSubDomains" if hsts.include_subdomains else "") + (
            "  preload" if hsts.preload else "")
    return text


def _member_tls_text(pool: PoolConfig) -> str:
    """``tls to members: verify with ca.pem, sni api.internal, client cert c.pem``."""
    tls = pool.tls
    parts = ["verify off" if not tls.verify else f"verify with {tls.ca or 'the system CAs'}"]
    parts.append(f"sni {tls.sni}" if tls.sni else "sni the member's host name")
    if tls.cert:
        parts.append(f"client cert {tls.cert}")
    return "tls to members: " + ", ".join(parts)


def _route_match(route: RouteConfig) -> str:
    keys = [
        f"{name} {value}"
        for name, value in (("host", route.host), ("path", route.path), ("path_prefix", route.path_prefix))
        if value is not None
    ]
    return "  ".join(keys) or "(catch-all)"


def _route_row(config: Config, route: RouteConfig, chain=None) -> Row:
    # "(route)" marks a value set on the route itself rather than inherited from the pool.
    relay = effective_relay(config, route) + (" (route)" if route.relay is not None else "")
    if chain is not None and chain.frame_events:
        relay = "inspect (frame plugins)"
    idle = dur(effective_ws_idle_timeout(config, route)) + (" (route)" if route.ws_idle_timeout is not None else "")
    row = [f"routes[{route.index}]", _route_match(route), f"-> pool {route.pool}", f"relay {relay}", f"ws_idle {idle}"]
    interval, timeout = effective_keepalive(config, route)
    if interval:
        own = " (route)" if route.ping_interval is not None else ""
        row.append(f"ping {dur(interval)}/{dur(timeout)}{own}")
    limits = _ws_limits_text(config, route, relay)
    if limits:
        row.append(limits)
    rc = effective_reconnect(config, route)
    if rc is not None:
        own = " (route)" if route.reconnect is not None else ""
        row.append(f"reconnect within {dur(rc.deadline)} holding {size(rc.buffer)}{own}")
    if route.allowed_origins:
        row.append("origins " + ", ".join(route.allowed_origins))
    if chain is not None:
        from wsproxy.plugin_setup import chain_summary

        row.append("plugins " + chain_summary(chain))
    return row


def _ws_limits_text(config: Config, route: RouteConfig, relay: str) -> str:
    """``max_message 64MiB  max_frame 1MiB  utf8 checked``: what a WebSocket may send, when
    it is not the defaults ("" then)."""
    limits = effective_ws_limits(config, route)
    own = (route.max_message_size, route.max_frame_size, route.validate_utf8) != (None, None, None)
    if not own and limits == ws_limits(route, None):
        return ""  # the defaults (README: max_message_size 64MiB, no frame limit, no UTF-8 check)
    if relay.startswith("raw"):
        return "ws limits ignored (raw relay)"
    text = "max_message " + (size(limits.max_message_size) if limits.max_message_size else "off")
    if limits.max_frame_size:
        text += f"  max_frame {size(limits.max_frame_size)}"
    if limits.validate_utf8:
        text += "  utf8 checked"
    return text + (" (route)" if own else "")


def _pool_block(pool: PoolConfig) -> list[str]:
    head = f"pool {pool.name}  {pool.balance}"
    if pool.balance == "hash":
        head += f" by {pool.hash_key} (no key: {pool.hash_fallback})"
    head += f"  max_conns {pool.max_conns}  relay {pool.relay}"
    queue = pool.queue
    lines = [
        head,
        "  limits    max_conns per member (below); all full: "
        + (f"queue {queue.size} for {dur(queue.timeout)}, then 503" if queue.size else "503 at once (no queue)"),
        "  persist   " + _persist_text(pool),
        f"  upstream  connect {dur(pool.connect_timeout)}  response {dur(pool.response_timeout)}"
        f"  ws_idle {dur(pool.ws_idle_timeout)}  retries {pool.retries}"
        f"  down after {pool.fail_threshold} fails for {dur(pool.down_time)} (backoff to {dur(pool.down_time_max)})"
        + (f"  keepalive {pool.keepalive_conns} conns for {dur(pool.keepalive_timeout)}"
           if pool.keepalive_conns else "  keepalive off"),
    ]
    extras = []
    if pool.health:
        h = pool.health
        where = f" {h.path}" if h.type != "tcp" else ""
        expect = ""
        if h.type == "http":
            expect = " expect " + ("/".join(str(s) for s in h.status) if h.status else "2xx/3xx")
        extras.append(f"health {h.type}{where}{expect} every {dur(h.interval)} timeout {dur(h.timeout)}"
                      f" rise {h.rise} fall {h.fall}")
    if pool.slow_start:
        extras.append(f"slow_start {dur(pool.slow_start)}")
    if pool.ping_interval:
        extras.append(f"ping every {dur(pool.ping_interval)} pong within {dur(pool.pong_timeout)}")
    if pool.proxy_protocol:
        extras.append(f"proxy_protocol {pool.proxy_protocol}")
    if pool.tls is not None:
        extras.append(_member_tls_text(pool))
    if extras:
        lines.append("  " + "  ".join(extras))
    rb = pool.rebalance
    lines.append(f"  drain     Close 1012 spread over {dur(pool.drain_spread)}  rebalance "
                 + (f"{'auto' if rb.auto else 'on demand'}: over {1 + rb.threshold:g}x fair share, "
                    f"{rb.rate:g}/s, at most {rb.max_fraction:.0%} per episode, {rb.order} first"
                    if rb is not None else "on demand only (defaults)"))
    return lines


def _persist_text(pool: PoolConfig) -> str:
    persist = pool.persist
    if persist is None:
        if pool.balance == "hash" and pool.hash_key == "source_ip":
            return "by source address (hash; coarse behind NAT)"
        return "none"
    secret = "secret from config" if persist.secret else "random secret per process: sessions move on restart"
    age = f"  max_age {dur(persist.max_age)}" if persist.max_age is not None else "  session cookie"
    return f"cookie {persist.cookie} ({secret}){age}"


def _member_row(member) -> Row:
    return [str(member.addr), f"weight {member.weight}", f"max_conns {member.max_conns}"]


def _plugin_row(plugin) -> Row:
    listeners = ", ".join(plugin.listeners) if plugin.listeners is not None else "every http listener"
    row = [f"plugins[{plugin.index}]", plugin.path, f"listeners: {listeners}"]
    if plugin.on_error:
        row.append(f"on_error {plugin.on_error}")
    if plugin.runtime:
        row.append(f"runtime {plugin.runtime}")
    if plugin.limits:
        row.append("limits " + ", ".join(f"{k} {v}" for k, v in plugin.limits.items()))
    if plugin.options:
        row.append("options: " + ", ".join(plugin.options))
    return row


def _widths(rows: list[Row]) -> list[int]:
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(cell))
    return widths


def _render(row: Row, widths: list[int]) -> str:
    return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
