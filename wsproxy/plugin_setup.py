"""From ``[[plugins]]`` in site.conf to one PluginChain per http listener.

The composition root (app.py) and ``wsproxy check`` both call ``load_chains``: a plugin
that fails to load is a config error naming the ``[[plugins]]`` entry and the file:line
(PLUGINS.md "Errors"), so ``check`` catches it before a start or a reload does.

Relative plugin paths are looked up next to the config file first, then in the working
directory (HAProxy's ``lua-load`` uses the working directory; a site.conf that travels with
its plugins/ directory works from anywhere this way).
"""

from __future__ import annotations


from wsproxy.config.paths import resolve_path
from wsproxy.config.schema import Config
from wsproxy.errors import ConfigError, ConfigErrors
from wsproxy.scripting import PluginChain, PluginLoadError, SharedStore, load_plugin
from wsproxy.scripting import events as ev

__all__ = ["load_chains", "chain_summary"]


def load_chains(config: Config, shared: SharedStore | None = None) -> dict[str, PluginChain | None]:
    """listener name -> its chain (None: no plugin applies there, or a tcp listener).

    Raises ConfigErrors (one per plugin file that failed) with the file, line and message."""
    if not config.plugins:
        return {name: None for name in config.listeners}
    store = shared if shared is not None else SharedStore()
    loaded = []
    errors = []
    names: dict[str, str] = {}
    for plugin in config.plugins:
        where = f"plugins[{plugin.index}]"
        try:
            for one in load_plugin(resolve_path(plugin.path, config.source), options=dict(plugin.options),
                                   on_error=plugin.on_error, listeners=plugin.listeners, runtime=plugin.runtime,
                                   limits=dict(plugin.limits) or None, shared=store, index=plugin.index):
                if one.name in names:
                    raise PluginLoadError(one.path, None, f"a plugin named {one.name!r} is already loaded from "
                                                          f"{names[one.name]}; set a different name")
                names[one.name] = one.path
                loaded.append(one)
        except PluginLoadError as exc:
            errors.append(ConfigError(where, str(exc)))
    if errors:
        raise ConfigErrors(errors, config.source)
    chains: dict[str, PluginChain | None] = {}
    for name, listener in config.listeners.items():
        chain = PluginChain.for_listener(loaded, name) if listener.mode == "http" else None
        chains[name] = chain if chain is not None and chain.plugins else None
    return chains


def chain_summary(chain: PluginChain | None) -> str:
    """``name(EVENT, EVENT) name(EVENT)`` in dispatch order, for ``wsproxy check``."""
    if chain is None:
        return "none"
    parts = []
    for plugin in chain.plugins:
        hooked = [e for e in ev.EVENTS if any(s.event == e for s in plugin.subscriptions)]
        parts.append(f"{plugin.name}[{plugin.kind}]({', '.join(hooked) or 'no events'})")
    return " ".join(parts)
