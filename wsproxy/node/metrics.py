"""Metrics: the node's counters, kept in the NodeTable, rendered as Prometheus text.

Why in the table: ``/metrics`` is answered by the control plane, but the connections are
counted by the workers. Every series is a counter column of the table (``counter_slot``);
each process adds to its own row and ``render`` sums the rows (``table.total``). A worker
that dies has its monotonic counters folded into row 0 and its gauges dropped
(``retire_row``), so counters never go backwards and gauges never stick.

Slots. ``register(config)`` runs in the control plane before workers fork and creates every
series that config can produce (listener, pool and member names, plugin entries, and the
fixed label sets below); a reload calls it again and it only adds. Workers never create a
slot: a label they do not know (which should not happen) is counted in the ``unknown``
series of that metric, never raises. The control plane's own records (health changes)
also go to pre-registered series, so slot numbers stay the same in every process.

The data path (a few events per connection, on the handshake path benchmarked in
benchmarks/RESULTS.md) is cheap by construction: a recording is one dict lookup of a
prebuilt tuple of columns plus a few ``list[i] += n``. Those adds go to a per-process list
first (``_local``), which is flushed into the process's table row every ``FLUSH_INTERVAL``
seconds by a timer on the running loop, and by ``render``/``flush`` in the same process;
a store into the shared mmap through a memoryview costs about three times a list add.
So /metrics on a multi-worker node lags the workers by up to ``FLUSH_INTERVAL``; with one
process it is exact. WebSocket frames and bytes are added once per session, when it ends
(from the relay's counters, like the access log): a long-lived WebSocket's traffic shows in
``wsproxy_websocket_frames_total`` / ``wsproxy_websocket_bytes_total`` when it closes.

Fixed label sets (the contract for dashboards):
- ``result`` of a WebSocket handshake (``wsproxy_websocket_handshakes_total``, counted for
  upgrade requests that matched a route; a plugin's answer to HTTP_REQUEST comes first):
  ``101`` the upgrade went through; ``4xx`` refused with a 4xx (invalid handshake, origin,
  the member's own 4xx, a plugin's answer); ``5xx`` the member answered a 5xx;
  ``member_failed`` the proxy answered 5xx itself (no member available, connect failures,
  response timeout, a bad 101); ``other`` any other answer (a member's 2xx/3xx, a plugin's
  redirect); ``closed`` no answer (the client left, or a plugin reset the connection).
- ``code`` of a WebSocket's first Close (``wsproxy_websocket_closes_total``): the codes in
  CLOSE_CODES, ``other`` for any other code, ``none`` when no code is known (raw relay);
  ``closed_by``: ``client`` | ``member`` | ``proxy`` | ``unknown``.
- ``direction``: ``in`` = client -> member, ``out`` = member -> client.
- ``state`` of a health change: ``up`` | ``down``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from dataclasses import dataclass, field

from wsproxy.logs import event
from wsproxy.node.table import (ADMIN, CHECKS_FAILED, CHECKS_OK, COUNTER, DRAINING, GAUGE, HEALTH, HEALTH_DOWN,
                                RTT_US, WEIGHT, NodeTable)

FLUSH_INTERVAL = 1.0  # seconds between flushes of a process's counts into its table row

CLOSE_CODES = (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1014)
CLOSERS = ("client", "member", "proxy")
HANDSHAKE_RESULTS = ("101", "4xx", "5xx", "member_failed", "other", "closed")
DIRECTIONS = ("in", "out")
HEALTH_STATES = ("up", "down")
MEMBER_CLOSES = ("drain", "rebalance")
# Why a client was refused or cut (``wsproxy_rejections_total``; README, "Security"):
REJECT_REASONS = (
    "bad_request",     # 400: a malformed or ambiguous request head (smuggling vectors included)
    "too_large",       # 414 / 431: request target or head over the listener's limits
    "head_timeout",    # 408 or closed: the head did not arrive within head_timeout (slowloris)
    "max_conns",       # the listener's max_conns reached: the connection is closed at once
    "ip_conns",        # the client IP's max_conns_per_ip reached: closed at once
    "handshake_rate",  # 429: the client IP's WebSocket handshake rate exceeded
    "origin",          # 403: the handshake's Origin is not in the route's allowed_origins
    "tls_handshake",   # the TLS handshake failed or did not finish within its timeout
    "ws_protocol",     # Close 1002: a WebSocket protocol violation after the upgrade
    "ws_utf8",         # Close 1007: invalid UTF-8 in a text message (routes with validate_utf8)
    "ws_too_big",      # Close 1009: a frame or message over max_frame_size / max_message_size
)
UNKNOWN = "unknown"

_NONE: dict = {}  # an empty map for lookups of unknown pools
_EJECTED = "member_ejected"  # control.ejected_key(): a process's passive-ejection gauge

# name -> (type, help, label names). Counters end in _total (exposition format 0.0.4).
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wsproxy_connections_total": (
        "counter", "Client connections accepted, per listener.", ("listener",)),
    "wsproxy_connections_active": (
        "gauge", "Client connections open now (HTTP, WebSocket, TCP), per listener.", ("listener",)),
    "wsproxy_member_connections_total": (
        "counter", "Connections handed to a member: HTTP requests and WebSocket upgrades forwarded, "
                   "TCP connections made.", ("pool", "member")),
    "wsproxy_websocket_sessions_total": (
        "counter", "WebSocket sessions relayed (a 101 went to the client), per member.", ("pool", "member")),
    "wsproxy_websocket_sessions_active": (
        "gauge", "WebSocket sessions open now, per member.", ("pool", "member")),
    "wsproxy_websocket_handshakes_total": (
        "counter", "WebSocket upgrade requests by result: 101, 4xx, 5xx (the member's), member_failed "
                   "(the proxy's 5xx), other, closed (no answer).", ("listener", "result")),
    "wsproxy_websocket_frames_total": (
        "counter", "WebSocket frames relayed (in = client to member, out = member to client), added when "
                   "each session ends; 0 on raw relays.", ("pool", "direction")),
    "wsproxy_websocket_bytes_total": (
        "counter", "WebSocket bytes relayed after the 101 (in = client to member, out = member to client), "
                   "added when each session ends.", ("pool", "direction")),
    "wsproxy_websocket_closes_total": (
        "counter", "WebSocket sessions ended, by the code of the first Close and who sent it.",
        ("code", "closed_by")),
    "wsproxy_health_changes_total": (
        "counter", "Member health state changes seen by the active checks, by the new state.",
        ("pool", "member", "state")),
    "wsproxy_drain_closes_total": (
        "counter", "WebSockets closed with 1012 because their member was drained.", ("pool", "member")),
    "wsproxy_rebalance_closes_total": (
        "counter", "WebSockets closed with 1012 by rebalancing.", ("pool", "member")),
    "wsproxy_member_lost_total": (
        "counter", "WebSocket sessions whose member went away without a Close (the client got 1014).",
        ("pool", "member")),
    "wsproxy_member_lost_unanswered_frames_total": (
        "counter", "Client frames forwarded to a member after its last data, when that member was lost "
                   "mid-stream: delivered to a member that is gone, maybe never processed.", ("pool", "member")),
    "wsproxy_member_lost_unanswered_bytes_total": (
        "counter", "Client bytes forwarded to a member after its last data, when that member was lost "
                   "mid-stream.", ("pool", "member")),
    "wsproxy_pool_queued_total": (
        "counter", "Requests that waited in the pool's queue for a member slot.", ("pool",)),
    "wsproxy_pool_queue_rejects_total": (
        "counter", "Requests answered 503 by the pool's queue (full, or the wait timed out).", ("pool",)),
    "wsproxy_pool_hash_fallbacks_total": (
        "counter", "balance = hash: picks made by hash_fallback because the request had no key.", ("pool",)),
    "wsproxy_rejections_total": (
        "counter", "Clients refused or cut for bad or hostile input, or over a limit, by reason "
                   "(see REJECT_REASONS).", ("listener", "reason")),
    "wsproxy_plugin_errors_total": (
        "counter", "Plugin handler failures (errors, invalid verdicts, limits), per [[plugins]] entry.",
        ("plugin", "path")),
}

# Rendered from the table's member control fields, for the members of the current config.
_MEMBER_GAUGES = (
    ("wsproxy_member_up", "gauge", "1 when the member takes new connections (not draining, not down by "
                                   "health checks or passive ejection in any process), else 0."),
    ("wsproxy_member_draining", "gauge", "1 while the member is drained by the operator."),
    ("wsproxy_member_connections", "gauge", "Connections to the member now, across all processes."),
    ("wsproxy_member_weight", "gauge", "The member's weight (the operator's when set, else the config's)."),
    ("wsproxy_member_health_rtt_seconds", "gauge", "Round trip of the member's last passing health check."),
    ("wsproxy_member_health_checks_total", "counter", "Active health checks run, by result."),
)


def escape_label(value: str) -> str:
    """A label value for the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label(v)}"' for n, v in zip(names, values)) + "}"


@dataclass
class _Family:
    name: str
    type: str
    help: str
    labelnames: tuple[str, ...]
    series: dict[tuple[str, ...], int] = field(default_factory=dict)  # label values -> column
    text: dict[int, str] = field(default_factory=dict)  # column -> 'name{labels}' (built once)


class Metrics:
    """The node's metric series. Build before forking (``register``); record anywhere."""

    def __init__(self, table: NodeTable) -> None:
        self.table = table
        self.generation = 0  # register() calls: the config generation when nobody says otherwise
        self.started = time.time()
        self._families = {name: _Family(name, t, h, labels) for name, (t, h, labels) in FAMILIES.items()}
        self._config = None
        self._full_warned = False
        # Hot-path lookups, filled by register(); values are tuples of columns.
        self._listeners: dict[str, tuple[int, ...]] = {}  # name -> (conns_total, conns_active, handshakes...)
        # pool -> addr -> (member conns total, ws total, ws active, drain closes, rebalance
        # closes, health up, health down, the pool's frames in, out, bytes in, out)
        self._members: dict[str, dict[str, tuple[int, ...]]] = {}
        self._unknown_member: tuple[int, ...] = ()
        self._closes: dict[str | None, dict[int | None, int]] = {}  # closed_by -> code -> column
        self._plugins: dict[int, int] = {}  # [[plugins]] index -> column
        self._by_col: dict[int, tuple[str, str]] = {}  # member column -> (pool, addr)
        self._rejections: dict[str, dict[str, int]] = {}  # listener -> reason -> column
        # This process's counts not yet in its table row (see the module docstring).
        self._local = [0] * table.counters
        self._flush_handle = None
        _forget_in_child(self)
        self._register_unknown()  # so that a record before register() counts as unknown too

    # -- registration (control plane, before fork) -------------------------------------------
    def _slot(self, family: str, values: tuple[str, ...], fallback: tuple[str, ...] | None = None) -> int:
        fam = self._families[family]
        col = fam.series.get(values)
        if col is not None:
            return col
        kind = GAUGE if fam.type == "gauge" else COUNTER
        try:
            col = self.table.counter_slot((family, *values), kind)
        except RuntimeError as exc:  # the table is full: count it with the metric's unknown series
            if not self._full_warned:
                self._full_warned = True
                event(logging.WARNING, "metrics: %s; further series are counted as unknown" % exc)
            if fallback is None or fallback == values:
                raise
            return self._slot(family, fallback)
        fam.series[values] = col
        fam.text[col] = family + _labels(fam.labelnames, values)
        return col

    def register(self, config) -> None:
        """Create every series ``config`` can produce (again on reload: only adds)."""
        self.generation += 1
        self._config = config
        u1, u2 = (UNKNOWN,), (UNKNOWN, UNKNOWN)
        for name in config.listeners:
            self._register_listener(name, u1)
        for pool in config.pools.values():
            for member in pool.members:
                self._register_member(pool.name, str(member.addr), u2)
            for family in ("wsproxy_pool_queued_total", "wsproxy_pool_queue_rejects_total",
                           "wsproxy_pool_hash_fallbacks_total"):
                self._slot(family, (pool.name,), u1)  # counted by balancing/pool.py, same slots
        for plugin in config.plugins:
            self._plugins[plugin.index] = self._slot("wsproxy_plugin_errors_total",
                                                     (str(plugin.index), plugin.path), u2)

    def _register_unknown(self) -> None:
        """The unknown series and the fixed label sets: made first, so they exist even when
        the table fills up later."""
        u1, u2 = (UNKNOWN,), (UNKNOWN, UNKNOWN)
        self._register_listener(UNKNOWN, u1)
        self._unknown_member = self._register_member(UNKNOWN, UNKNOWN, u2)
        self._plugin_unknown = self._slot("wsproxy_plugin_errors_total", u2)
        for family in ("wsproxy_pool_queued_total", "wsproxy_pool_queue_rejects_total",
                       "wsproxy_pool_hash_fallbacks_total"):
            self._slot(family, u1)
        for closer in (*CLOSERS, None):
            for code in (*CLOSE_CODES, "other", None):
                label = (str(code) if code is not None else "none", closer or UNKNOWN)
                col = self._slot("wsproxy_websocket_closes_total", label)
                if code != "other":
                    self._closes.setdefault(closer, {})[code] = col

    def _register_listener(self, name: str, u: tuple) -> None:
        cols = [self._slot("wsproxy_connections_total", (name,), u),
                self._slot("wsproxy_connections_active", (name,), u)]
        for result in HANDSHAKE_RESULTS:
            cols.append(self._slot("wsproxy_websocket_handshakes_total", (name, result), (UNKNOWN, result)))
        self._listeners[name] = tuple(cols)
        self._rejections[name] = {reason: self._slot("wsproxy_rejections_total", (name, reason), (UNKNOWN, reason))
                                  for reason in REJECT_REASONS}

    def _register_member(self, pool: str, addr: str, u: tuple) -> tuple[int, ...]:
        labels = (pool, addr)
        cols = (
            self._slot("wsproxy_member_connections_total", labels, u),
            self._slot("wsproxy_websocket_sessions_total", labels, u),
            self._slot("wsproxy_websocket_sessions_active", labels, u),
            self._slot("wsproxy_drain_closes_total", labels, u),
            self._slot("wsproxy_rebalance_closes_total", labels, u),
            *(self._slot("wsproxy_health_changes_total", (*labels, s), (*u, s)) for s in HEALTH_STATES),
            *(self._slot(family, (pool, d), (UNKNOWN, d))
              for family in ("wsproxy_websocket_frames_total", "wsproxy_websocket_bytes_total") for d in DIRECTIONS),
            self._slot("wsproxy_member_lost_total", labels, u),
            self._slot("wsproxy_member_lost_unanswered_frames_total", labels, u),
            self._slot("wsproxy_member_lost_unanswered_bytes_total", labels, u),
        )
        self._members.setdefault(pool, {})[addr] = cols
        if pool != UNKNOWN:
            try:
                self._by_col[self.table.member_slot(pool, addr)] = labels
            except RuntimeError:
                pass  # no member column left: the node table says so where it matters
        return cols

    # -- the data path: client connections ----------------------------------------------------
    def connection_opened(self, listener: str) -> tuple:
        """A client connection's session starts on ``listener``; returns its token, for
        ``connection_closed``, ``handshake`` and ``ws_opened``/``ws_closed``."""
        token = self._listeners.get(listener)
        if token is None:
            token = self._listeners[UNKNOWN]
        local = self._local
        local[token[0]] += 1
        local[token[1]] += 1
        if self._flush_handle is None:
            self._arm()
        return token

    def rejected(self, listener: str, reason: str) -> None:
        """A client of ``listener`` was refused or cut for ``reason`` (one of REJECT_REASONS)."""
        cols = self._rejections.get(listener) or self._rejections[UNKNOWN]
        col = cols.get(reason)
        if col is None:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REJECT_REASONS}")
        self._local[col] += 1
        if self._flush_handle is None:
            self._arm()

    def connection_closed(self, token: tuple) -> None:
        """The connection of ``token`` (from ``connection_opened``) is gone."""
        self._local[token[1]] -= 1

    def member_connection(self, pool: str, addr: str) -> None:
        """A request, upgrade or TCP connection was handed to member ``addr`` of ``pool``."""
        cols = self._members.get(pool, _NONE).get(addr)
        if cols is None:
            cols = self._unknown_member
        self._local[cols[0]] += 1

    # -- the data path: WebSockets ------------------------------------------------------------
    def handshake(self, token: tuple, status: int | None, member_status: int | None = None) -> None:
        """A WebSocket upgrade request on the listener of ``token`` ended without a 101:
        ``status`` is what the client got (None: nothing), ``member_status`` the member's own
        answer when it sent one (a 5xx of its own is "5xx", one of the proxy "member_failed")."""
        if status is None:
            result = 5
        elif 400 <= status < 500:
            result = 1
        elif status >= 500:
            result = 2 if member_status == status else 3
        else:
            result = 4
        self._local[token[2 + result]] += 1

    def ws_opened(self, token: tuple, pool: str, addr: str) -> tuple:
        """A 101 went to the client on the connection of ``token``: counts the handshake and
        the session. Returns the member's token for ``ws_closed``."""
        cols = self._members.get(pool, _NONE).get(addr)
        if cols is None:
            cols = self._unknown_member
        local = self._local
        local[token[2]] += 1
        local[cols[1]] += 1
        local[cols[2]] += 1
        return cols

    def ws_closed(self, token: tuple, member: tuple, relay) -> None:
        """The WebSocket ended (and with it the client connection of ``token``): its frames,
        bytes and first Close. ``member``: from ``ws_opened``; ``relay``: the WsRelay, read
        as the access log reads it."""
        local = self._local
        local[token[1]] -= 1
        local[member[2]] -= 1
        c2u = relay.c2u
        if c2u is not None:
            local[member[7]] += c2u.frames
            local[member[8]] += relay.u2c.frames
        local[member[9]] += relay.bytes_in
        local[member[10]] += relay.bytes_out
        code = relay.close_code
        col = self._closes.get(relay.closed_by, _NONE).get(code)
        if col is None:
            col = self._close_other(code, relay.closed_by)
        local[col] += 1

    def member_lost(self, member: tuple, frames: int, nbytes: int) -> None:
        """The member of ``member`` (from ``ws_opened``) went away mid-stream; ``frames`` and
        ``nbytes`` the client had sent it after its last data (relay.lost_in_flight)."""
        local = self._local
        local[member[11]] += 1
        local[member[12]] += frames
        local[member[13]] += nbytes

    def _close_other(self, code, closed_by) -> int:
        by = closed_by if closed_by in CLOSERS else None
        if code is not None and code not in CLOSE_CODES:
            code = "other"
        return self._families["wsproxy_websocket_closes_total"].series[
            (str(code) if code is not None else "none", by or UNKNOWN)]

    # -- rare events (written straight to the table) ------------------------------------------
    def _member(self, pool: str, addr: str) -> tuple[int, ...]:
        return self._members.get(pool, _NONE).get(addr) or self._unknown_member

    def health_change(self, pool: str, addr: str, state: str) -> None:
        """The active checks moved member ``addr`` of ``pool`` to ``state`` ("up" | "down");
        the control plane calls this (ControlPlane._count_health_changes)."""
        self.table.add(self._member(pool, addr)[5 if state == "up" else 6])

    def drain_close(self, pool: str, addr: str, n: int = 1) -> None:
        self.table.add(self._member(pool, addr)[3], n)

    def rebalance_close(self, pool: str, addr: str, n: int = 1) -> None:
        self.table.add(self._member(pool, addr)[4], n)

    def member_close(self, kind: str, col: int) -> None:
        """LiveConnections' ``on_close(kind, column)``: a drain or rebalance close was sent."""
        pool, addr = self._by_col.get(col, (UNKNOWN, UNKNOWN))
        if kind == "drain":
            self.drain_close(pool, addr)
        else:
            self.rebalance_close(pool, addr)

    def plugin_error(self, index: int) -> None:
        """A handler of the ``[[plugins]]`` entry ``index`` failed (scripting/chain.py)."""
        col = self._plugins.get(index)
        self.table.add(self._plugin_unknown if col is None else col)

    # -- flushing --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Move this process's pending counts into its table row."""
        local, table = self._local, self.table
        for col in range(len(table.counter_kinds)):
            value = local[col]
            if value:
                local[col] = 0
                table.add(col, value)

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests, tools): counts wait for flush()/render()
        self._flush_handle = loop.call_later(FLUSH_INTERVAL, self._tick, loop)

    def _tick(self, loop) -> None:
        self.flush()
        if loop.is_closed():
            self._flush_handle = None
        else:
            self._flush_handle = loop.call_later(FLUSH_INTERVAL, self._tick, loop)

    def stop(self) -> None:
        """Flush and stop the timer (the process is stopping)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.flush()

    # -- reading -----------------------------------------------------------------------------------
    def value(self, family: str, *labels: str) -> int:
        """One series' node-wide value (tests, the stats page); this process's pending counts included."""
        col = self._families[family].series[tuple(labels)]
        return self.table.total(col) + self._local[col]

    def render(self, generation: int | None = None) -> str:
        """The Prometheus text exposition format 0.0.4."""
        self.flush()
        table = self.table
        out: list[str] = []
        for fam in self._families.values():
            if not fam.series:
                continue
            out.append(f"# HELP {fam.name} {fam.help}")
            out.append(f"# TYPE {fam.name} {fam.type}")
            total = table.total
            for col, text in fam.text.items():
                out.append(f"{text} {total(col)}")
        self._render_members(out)
        out.append("# HELP wsproxy_config_generation The configuration generation in service (1 = the first).")
        out.append("# TYPE wsproxy_config_generation gauge")
        out.append(f"wsproxy_config_generation {generation if generation is not None else self.generation}")
        out.append("# HELP wsproxy_worker_processes Worker processes alive (0: one process serves and controls).")
        out.append("# TYPE wsproxy_worker_processes gauge")
        out.append(f"wsproxy_worker_processes {len(table.live_rows())}")
        out.append("# HELP wsproxy_start_time_seconds When this node started, in seconds since the epoch.")
        out.append("# TYPE wsproxy_start_time_seconds gauge")
        out.append(f"wsproxy_start_time_seconds {self.started:.3f}")
        return "\n".join(out) + "\n"

    def _render_members(self, out: list[str]) -> None:
        config = self._config
        if config is None:
            return
        table = self.table
        rows: dict[str, list[str]] = {name: [] for name, _, _ in _MEMBER_GAUGES}
        for pool in config.pools.values():
            for member in pool.members:
                addr = str(member.addr)
                col = table.member_slots.get((pool.name, addr))
                if col is None:
                    continue
                labels = _labels(("pool", "member"), (pool.name, addr))
                draining = table.ctrl(col, ADMIN) == DRAINING
                ejected = table.counter_slots.get((_EJECTED, pool.name, addr))
                down = table.ctrl(col, HEALTH) == HEALTH_DOWN or (ejected is not None and table.total(ejected) > 0)
                weight = table.ctrl(col, WEIGHT)
                rtt = table.ctrl(col, RTT_US)
                rows["wsproxy_member_up"].append(f"wsproxy_member_up{labels} {0 if draining or down else 1}")
                rows["wsproxy_member_draining"].append(f"wsproxy_member_draining{labels} {int(draining)}")
                rows["wsproxy_member_connections"].append(f"wsproxy_member_connections{labels} {table.conns(col)}")
                rows["wsproxy_member_weight"].append(
                    f"wsproxy_member_weight{labels} {weight if weight >= 0 else member.weight}")
                if rtt >= 0:
                    rows["wsproxy_member_health_rtt_seconds"].append(
                        f"wsproxy_member_health_rtt_seconds{labels} {rtt / 1e6:.6f}")
                if pool.health is not None:
                    checks = rows["wsproxy_member_health_checks_total"]
                    base = labels[:-1]
                    checks.append(f'wsproxy_member_health_checks_total{base},result="ok"}} '
                                  f'{table.ctrl(col, CHECKS_OK)}')
                    checks.append(f'wsproxy_member_health_checks_total{base},result="failed"}} '
                                  f'{table.ctrl(col, CHECKS_FAILED)}')
        for name, kind, help_text in _MEMBER_GAUGES:
            if rows[name]:
                out.append(f"# HELP {name} {help_text}")
                out.append(f"# TYPE {name} {kind}")
                out.extend(rows[name])


def _forget_in_child(metrics: Metrics) -> None:
    """After fork() the child starts with no pending counts (the parent flushes its own) and
    no flush timer (it belonged to the parent's loop; the child arms one on its first record)."""
    ref = weakref.ref(metrics)

    def reset() -> None:
        m = ref()
        if m is not None:
            m._local = [0] * m.table.counters
            m._flush_handle = None

    os.register_at_fork(after_in_child=reset)
