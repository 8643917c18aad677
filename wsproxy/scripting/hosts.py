"""What every loaded plugin has, whatever its language: identity, policy, limits, counters.

``LoadedPlugin`` is the base of ``LuaPlugin`` and ``PythonPlugin``; the chain only needs
these fields plus ``subscriptions``. ``PluginLog`` and ``PluginMetric`` are the ``log`` and
``metric`` helpers: Python plugins call them directly, Lua plugins' records are replayed
into them after each call. Log records go to the ``wsproxy.plugin.<name>`` logger with a
``plugin`` field (wsproxy.logs prints it in text and JSON).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from wsproxy.scripting.breaker import CircuitBreaker
from wsproxy.scripting.events import Filter

__all__ = ["Limits", "PluginStats", "PluginLog", "PluginMetric", "LoadedPlugin", "Subscription",
           "ON_ERROR", "DEFAULT_PRIORITY"]

ON_ERROR = ("abort", "continue", "disable")
DEFAULT_PRIORITY = 500


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-plugin limits. ``memory``: bytes a Lua runtime may allocate (lupa ``max_memory``,
    the runtime's own ~20 KiB not counted). ``instructions``: Lua VM instructions per call
    (Lua 5.4 only). ``timeout``: seconds an async Python handler may take."""

    memory: int = 16 * 1024 * 1024
    instructions: int = 1_000_000
    timeout: float = 5.0

    @classmethod
    def from_value(cls, value: "Limits | Mapping[str, Any] | None") -> "Limits":
        if value is None:
            return cls()
        if isinstance(value, Limits):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"limits must be a table like {{ memory = 16777216, instructions = 1000000 }}, got {value!r}")
        unknown = set(value) - {"memory", "instructions", "timeout"}
        if unknown:
            raise ValueError(f"unknown limits key(s) {', '.join(sorted(unknown))}; known: memory, instructions, timeout")
        default = cls()
        memory = value.get("memory", default.memory)
        instructions = value.get("instructions", default.instructions)
        timeout = value.get("timeout", default.timeout)
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 256 * 1024:
            raise ValueError(f"limits.memory must be bytes >= 262144, got {memory!r}")
        if isinstance(instructions, bool) or not isinstance(instructions, int) or instructions < 1000:
            raise ValueError(f"limits.instructions must be an integer >= 1000, got {instructions!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"limits.timeout must be seconds > 0, got {timeout!r}")
        return cls(memory, instructions, float(timeout))


class PluginStats:
    """Counters of one plugin: handler calls, errors by (event, kind), its own metrics.

    Calls are counted per subscription (one attribute increment on the hot path) and summed here.
    """

    __slots__ = ("_plugin", "errors", "metrics")

    def __init__(self, plugin: "LoadedPlugin") -> None:
        self._plugin = plugin
        self.errors: Counter[tuple[str, str]] = Counter()
        self.metrics: Counter[str] = Counter()

    @property
    def calls(self) -> int:
        return sum(sub.calls for sub in self._plugin.subscriptions)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls,
                "errors": {f"{event}:{kind}": n for (event, kind), n in self.errors.items()},
                "metrics": dict(self.metrics)}


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


class PluginLog:
    """``log.info/warn/error/debug(msg, *args)``: Python logging, tagged with the plugin name."""

    __slots__ = ("name", "logger", "_fields")

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = logging.getLogger(f"wsproxy.plugin.{name}")
        self._fields = {"fields": {"plugin": name}}

    def emit(self, level: str, msg: str, *args, exc_info=None) -> None:
        number = _LEVELS.get(level, logging.INFO)
        if self.logger.isEnabledFor(number):
            self.logger.log(number, msg, *args, extra=self._fields, exc_info=exc_info)

    def debug(self, msg: str, *args) -> None:
        self.emit("debug", msg, *args)

    def info(self, msg: str, *args) -> None:
        self.emit("info", msg, *args)

    def warn(self, msg: str, *args) -> None:
        self.emit("warn", msg, *args)

    warning = warn

    def error(self, msg: str, *args) -> None:
        self.emit("error", msg, *args)


class PluginMetric:
    """``metric.incr(name, n=1)``: a plugin's own counters, kept in its PluginStats."""

    __slots__ = ("_counts",)

    def __init__(self, stats: PluginStats) -> None:
        self._counts = stats.metrics

    def incr(self, name: str, n: int | float = 1) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names are non-empty strings, got {name!r}")
        self._counts[name] += n


class Subscription:
    """One handler of one plugin for one event, with its filter unpacked for the hot path."""

    __slots__ = ("plugin", "event", "filter", "handler", "is_async", "is_lua", "dir", "opcodes",
                 "fin_only", "min_len", "payload", "max_size", "order", "breaker", "calls")

    def __init__(self, plugin: "LoadedPlugin", event: str, filter: Filter,
                 handler: Callable | None = None, is_async: bool = False, order: int = 0) -> None:
        self.plugin = plugin
        self.event = event
        self.filter = filter
        self.handler = handler
        self.is_async = is_async
        self.is_lua = handler is None
        self.dir = filter.dir
        self.opcodes = filter.opcodes
        self.fin_only = filter.fin_only
        self.min_len = filter.min_len
        self.payload = filter.payload  # True: all, False: none (None), N: the first N bytes
        self.max_size = filter.max_message_size
        self.order = order
        self.breaker = plugin.breaker  # the plugin's, reached in one step on the hot path
        self.calls = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.plugin.name} {self.event} priority={self.plugin.priority}>"


class LoadedPlugin:
    """Base of the language hosts. ``slot`` is set by the chain (its index there)."""

    kind = "?"

    def __init__(self, *, name: str, path: str, priority: int, on_error: str,
                 listeners: tuple[str, ...] | None, index: int, limits: Limits) -> None:
        self.name = name
        self.path = path
        self.priority = priority
        self.on_error = on_error
        self.listeners = listeners
        self.index = index
        self.limits = limits
        self.stats = PluginStats(self)
        self.log = PluginLog(name)
        self.metric = PluginMetric(self.stats)
        self.breaker = CircuitBreaker()
        self.subscriptions: list[Subscription] = []
        # error-log rate limit (one line per second, the rest counted)
        self.last_error_log = -1e9
        self.suppressed_errors = 0

    def applies_to(self, listener: str | None) -> bool:
        return listener is None or self.listeners is None or listener in self.listeners

    def release(self, conn_id) -> None:
        """Forget per-connection state kept outside the session (Lua ctx tables)."""

    def restart(self) -> None:
        """Start afresh after the circuit breaker (Lua: a new runtime)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.path} priority={self.priority} on_error={self.on_error}>"
