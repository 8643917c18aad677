"""The Python plugin API: ``from wsproxy.plugin import Plugin, on, close``.

A plugin is a class; handlers are methods marked with ``@on(EVENT, **filters)``; a handler
returns None (pass) or a verdict built by ``drop()``, ``replace(data)``, ``close(code,
reason)``, ``respond(status, body, headers)``, ``redirect(url, status)``, ``reselect(pool)``
or ``reject()``. The contract is ../shared/design/PLUGINS.md; the design study is
../shared/research/plugin-api.md §2 (mitmproxy's addon ergonomics on iRules' event model).

```python
class Route(Plugin):
    priority = 100                       # 0..1000, lower runs first, default 500

    @on("HTTP_REQUEST")
    def route(self, ctx, req):
        if req.path.startswith("/chat/"):
            ctx.use_pool("chat")

    @on("WS_MESSAGE", dir="client", opcodes=("text",), max_message_size=1 << 20)
    def guard(self, ctx, m):
        if b"forbidden" in m.payload:
            return close(1008, "policy")
```

Python plugins are trusted code: no sandbox and no preemption (Lua is the path for
third-party logic). HTTP_REQUEST, HTTP_RESPONSE and WS_OPEN handlers may be ``async def``;
they are awaited with a timeout (``limits.timeout``, default 5 s). Every other event is
sync only: an ``async def`` there is refused when the class is defined.

Each instance has ``name`` (default: the class name), ``priority``, ``on_error`` (None =
the config's, else "abort"), ``options`` (the config's ``options`` table), ``log``
(``log.info("x=%s", x)``, tagged with the plugin name), ``metric`` (``metric.incr(name)``)
and ``shared`` (the worker's TTL key-value store). Override ``setup()`` to prepare state
from ``options``; it runs once at load, after those attributes are set.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from wsproxy.scripting.events import ASYNC_EVENTS, Filter
from wsproxy.scripting.verdicts import (DROP, REJECT, Verdict, close, drop, redirect, reject, replace,
                                        reselect, respond)

if TYPE_CHECKING:
    from wsproxy.scripting.hosts import PluginLog, PluginMetric
    from wsproxy.scripting.shared import SharedStore

__all__ = ["Plugin", "on", "Verdict", "DROP", "REJECT", "drop", "replace", "close", "respond", "redirect",
           "reselect", "reject"]

_MARK = "_wsproxy_on"  # attribute on a handler function: list of (event, Filter)


def on(event: str, *, dir: str | None = None, opcodes: Iterable[str] | str | None = None,
       payload: bool | int = True, max_message_size: int | None = None, fin_only: bool = False,
       min_len: int = 0, max_size: int | None = None) -> Callable[[Callable], Callable]:
    """Mark a method as the handler of ``event``; the keyword arguments are its filters.

    ``dir`` "client" (client -> member) or "server"; ``opcodes`` names ("text", "binary",
    "cont", "ping", "pong", "close"); ``payload`` True / False / first N bytes;
    ``max_message_size`` (alias ``max_size``): bigger WS_MESSAGEs skip this handler;
    ``fin_only`` (WS_FRAME); ``min_len``. The chain checks them before building the event.
    """
    filt = Filter.build(event, dir=dir, opcodes=opcodes, payload=payload, max_message_size=max_message_size,
                        fin_only=fin_only, min_len=min_len, max_size=max_size)

    def mark(fn: Callable) -> Callable:
        if inspect.iscoroutinefunction(fn) and event not in ASYNC_EVENTS:
            raise TypeError(f"{event} handlers must be plain functions (only {', '.join(sorted(ASYNC_EVENTS))} "
                            f"may be async def)")
        marks = getattr(fn, _MARK, None)
        if marks is None:
            marks = []
            setattr(fn, _MARK, marks)
        marks.append((event, filt))
        return fn

    return mark


class Plugin:
    """Base class of Python plugins; subclasses define handlers with ``@on``."""

    name: str = ""
    priority: int = 500
    on_error: str | None = None

    options: Mapping[str, Any] = MappingProxyType({})
    log: "PluginLog"
    metric: "PluginMetric"
    shared: "SharedStore"

    def setup(self) -> None:
        """Called once after loading, with ``options``, ``log``, ``metric`` and ``shared`` set."""
