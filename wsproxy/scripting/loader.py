"""Load the configured plugins: plain values in, ``LoadedPlugin`` objects out.

Config parsing is not done here (``wsproxy.config`` owns site.conf); the caller hands over
each ``[[plugins]]`` table's values: ``path``, ``options``, ``on_error``, ``listeners``,
``runtime`` ("lua54" default | "luajit", Lua only) and ``limits`` (``memory`` bytes and
``instructions`` per call for Lua, ``timeout`` seconds for async Python handlers). Any
problem raises ``PluginLoadError`` naming the file (and line), and loading stops there: a
plugin that fails to load rejects the whole config (plugin-api.md §2.5), so a reload keeps
the old generation.

All plugins of one load share one ``SharedStore`` (the worker's ``shared``), and names must
be unique because logs and counters are keyed by them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import ON_ERROR, Limits, LoadedPlugin
from wsproxy.scripting.lua import RUNTIMES, LuaPlugin
from wsproxy.scripting.python_plugins import load_python_plugins
from wsproxy.scripting.shared import SharedStore

__all__ = ["PluginSpec", "load_plugin", "load_plugins"]

_LUA_LIMITS = frozenset({"memory", "instructions"})
_PYTHON_LIMITS = frozenset({"timeout"})


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One ``[[plugins]]`` entry, as plain values."""

    path: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    on_error: str | None = None  # None: the plugin's own declaration, else "abort"
    listeners: tuple[str, ...] | None = None  # None: every http listener
    runtime: str | None = None  # Lua only: "lua54" (default) | "luajit"
    limits: Mapping[str, Any] | Limits | None = None


def _limits(path: str, is_lua: bool, value) -> Limits:
    if isinstance(value, Mapping):
        allowed = _LUA_LIMITS if is_lua else _PYTHON_LIMITS
        other = set(value) & ((_LUA_LIMITS | _PYTHON_LIMITS) - allowed)
        if other:
            kind = "Python plugins (async handlers)" if is_lua else "Lua plugins"
            raise PluginLoadError(path, None, f"limits.{sorted(other)[0]} applies to {kind} only")
    try:
        return Limits.from_value(value)
    except ValueError as exc:
        raise PluginLoadError(path, None, str(exc)) from None


def load_plugin(path: str, *, options: Mapping[str, Any] | None = None, on_error: str | None = None,
                listeners: Iterable[str] | None = None, runtime: str | None = None,
                limits: Mapping[str, Any] | Limits | None = None, shared: SharedStore | None = None,
                index: int = 0, base_dir: str | None = None) -> list[LoadedPlugin]:
    """Load one file: a .lua file gives one plugin, a .py file one per Plugin subclass."""
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    if on_error is not None and on_error not in ON_ERROR:
        raise PluginLoadError(path, None, f"on_error must be abort, continue or disable, got {on_error!r}")
    if options is not None and not isinstance(options, Mapping):
        raise PluginLoadError(path, None, f"options must be a table, got {type(options).__name__}")
    listener_names = tuple(listeners) if listeners is not None else None
    store = shared if shared is not None else SharedStore()
    if path.endswith(".lua"):
        if runtime is not None and runtime not in RUNTIMES:
            raise PluginLoadError(path, None, f'runtime must be "lua54" or "luajit", got {runtime!r}')
        return [LuaPlugin(path, options=options, on_error=on_error, listeners=listener_names, runtime=runtime,
                          limits=_limits(path, True, limits), shared=store, index=index)]
    if path.endswith(".py"):
        if runtime is not None:
            raise PluginLoadError(path, None, "runtime applies to Lua plugins only")
        return list(load_python_plugins(path, options=options, on_error=on_error, listeners=listener_names,
                                        limits=_limits(path, False, limits), shared=store, index=index))
    raise PluginLoadError(path, None, "a plugin is a .lua or a .py file")


def load_plugins(specs: Iterable[PluginSpec | Mapping[str, Any]], *, shared: SharedStore | None = None,
                 base_dir: str | None = None) -> list[LoadedPlugin]:
    """Load every configured plugin in config order (the tie-break after priority)."""
    store = shared if shared is not None else SharedStore()
    loaded: list[LoadedPlugin] = []
    by_name: dict[str, LoadedPlugin] = {}
    for index, spec in enumerate(specs):
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"path", "options", "on_error", "listeners", "runtime", "limits"}
            if unknown or "path" not in spec:
                where = spec.get("path", f"plugins[{index}]")
                problem = f"unknown key(s) {', '.join(sorted(unknown))}" if unknown else "path is missing"
                raise PluginLoadError(str(where), None, problem)
            spec = PluginSpec(**spec)
        for plugin in load_plugin(spec.path, options=spec.options, on_error=spec.on_error,
                                  listeners=spec.listeners, runtime=spec.runtime, limits=spec.limits,
                                  shared=store, index=index, base_dir=base_dir):
            other = by_name.get(plugin.name)
            if other is not None:
                raise PluginLoadError(plugin.path, None, f"a plugin named {plugin.name!r} is already loaded "
                                      f"from {other.path}; set a different name")
            by_name[plugin.name] = plugin
            loaded.append(plugin)
    return loaded
