"""Plugin errors: a load error names the file and line; a runtime error names plugin, event, kind.

Load errors reject the whole config (plugin-api.md §2.5), so the message has to be enough
to fix the file: ``plugins/route.lua:12: unexpected symbol near 'end'`` for Lua and the
innermost frame inside the plugin file for Python (a SyntaxError's own line, else the last
traceback line that is in the file).

Runtime errors never escape the chain (``asyncio.CancelledError`` and other BaseExceptions
do): they are counted by ``kind`` and the plugin's ``on_error`` decides what happens.
"""

from __future__ import annotations

from wsproxy.errors import WsProxyError

__all__ = ["PluginLoadError", "PluginError", "ERROR_KINDS"]

# error: an exception / Lua error; budget: Lua instruction budget spent; memory: Lua memory
# cap hit; timeout: an async handler took too long; invalid: a verdict or ctx call that the
# event does not allow; breaker: not called, the circuit breaker is open.
ERROR_KINDS = ("error", "budget", "memory", "timeout", "invalid", "breaker")


class PluginLoadError(WsProxyError):
    """A plugin file could not be loaded: ``path``, ``line`` (None if unknown), ``message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message


class PluginError(WsProxyError):
    """A handler failed: which plugin, in which event, what kind (see ERROR_KINDS)."""

    def __init__(self, plugin: str, event: str, kind: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r} {event}: {kind}: {message}")
        self.plugin = plugin
        self.event = event
        self.kind = kind
        self.message = message
