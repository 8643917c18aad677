"""The plugin runtime (issue #5): Lua and Python plugins on an iRules-like event model.

One job per module:

    events.py          event names and order, allowed verdicts/actions, subscription filters
    verdicts.py        Verdict and its constructors (drop, replace, close, respond, ...)
    objects.py         Request/Response/Frame/... views for Python handlers, Ctx, Actions
    shared.py          the per-worker TTL key-value store (``shared``)
    hosts.py           what every loaded plugin has: limits, counters, log, breaker
    breaker.py         the circuit breaker
    lua_prelude.py     the trusted Lua code: sandbox, instruction budget, event tables
    lua.py             LuaPlugin: a sandboxed lupa runtime per plugin
    python_plugins.py  loading Plugin subclasses from a .py file
    loader.py          PluginSpec, load_plugin(s): config values -> loaded plugins
    chain.py           PluginChain / PluginSession / Outcome: dispatch per event

The contract is ../shared/design/PLUGINS.md; the rationale ../shared/research/plugin-api.md.
The names below are imported lazily: ``wsproxy.plugin`` imports ``events`` while this package
is being set up, and ``python_plugins`` imports ``wsproxy.plugin`` in turn.
"""

from __future__ import annotations

import importlib

__all__ = ["PluginChain", "PluginSession", "Outcome", "PluginSpec", "load_plugin", "load_plugins",
           "SharedStore", "PluginError", "PluginLoadError", "Limits"]

_WHERE = {
    "PluginChain": "chain", "PluginSession": "chain", "Outcome": "chain",
    "PluginSpec": "loader", "load_plugin": "loader", "load_plugins": "loader",
    "SharedStore": "shared", "PluginError": "errors", "PluginLoadError": "errors", "Limits": "hosts",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
