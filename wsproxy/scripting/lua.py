"""Lua plugins through lupa: one sandboxed runtime per plugin, one crossing per event.

Choices (plugin-api.md §3), and why:

- **Runtime per plugin** (§3.3 "isolation layout"): each plugin has its own ``max_memory``,
  its own globals, and its ``ctx.vars`` are private by construction. ``runtime = "lua54"``
  is the default; ``"luajit"`` (``lupa.luajit21``) is an opt-in for trusted, compute-heavy
  code. **Warning: LuaJIT cannot be preempted** (count hooks never fire in compiled code,
  §3.3), so a LuaJIT plugin has *no instruction budget* and ``while true do end`` hangs the
  worker; its memory cap is best effort (lupa documents ``max_memory`` as unsupported on
  64-bit LuaJIT).
- **Constructor belt and braces** (§3.3): ``register_eval=False``, ``register_builtins=False``,
  ``unpack_returned_tuples=True``, ``encoding=None`` (Lua strings are bytes both ways; every
  str is encoded here before it crosses, since with ``encoding=None`` a Python str would
  become userdata) and an ``attribute_filter`` that denies everything, although no Python
  object is ever handed to Lua: only bytes, numbers, booleans, nil and Lua tables.
- **The sandbox, budget and event tables are Lua code** (``lua_prelude.py``). Python sends
  jobs to the prelude's worker coroutine with ``_LuaThread.send(args)`` and gets back nothing
  (pass, no actions: the hot path), ``"ok", verdict, a1, a2, a3, n`` or ``"error", kind,
  message, -, -, n`` (``n`` records of actions, edits and log lines, fetched with one plain
  call), or a ``"host"`` request (``shared.*``) that it answers by resuming the worker.
- **Memory and instructions**: ``limits.memory`` (default 16 MiB) is lupa's ``max_memory``;
  ``limits.instructions`` (default 1,000,000 per call) is enforced by a count hook every
  ``min(1000, instructions / 10)`` instructions, so the overshoot is at most one tick. A
  runtime with the prelude loaded holds ~120 KiB.
- **Errors keep the runtime.** A Lua error, a spent budget or a memory error inside the
  handler is caught by the prelude's ``pcall``; the same runtime serves the next call (Lua
  collects the garbage of a memory bomb as soon as it unwinds). Only if the worker coroutine
  itself dies (memory exhausted in trusted code) is it replaced, and if that fails too, the
  whole runtime is rebuilt from the source kept at load. The circuit breaker also rebuilds
  the runtime when it closes after a cool-down.
"""

from __future__ import annotations

import importlib
import math
import os
import re
from typing import Any, Mapping

from wsproxy.scripting import events as ev
from wsproxy.scripting.errors import PluginError, PluginLoadError
from wsproxy.scripting.hosts import DEFAULT_PRIORITY, ON_ERROR, Limits, LoadedPlugin, Subscription
from wsproxy.scripting.lua_prelude import PRELUDE
from wsproxy.scripting.objects import PROTECTED_HEADERS, check_op
from wsproxy.scripting.shared import SharedStore
from wsproxy.scripting.verdicts import DROP, REJECT, Verdict, close, redirect, replace, reselect, respond

__all__ = ["LuaPlugin", "RUNTIMES", "EVENT_BYTES", "DIR_BYTES", "OPCODE_BYTES", "conn_args", "event_args", "to_bytes"]

# config value -> lupa module(s) to try, in order
RUNTIMES = {"lua54": ("lupa.lua54",), "luajit": ("lupa.luajit21",)}
MAX_RECORDS = 1000  # ctx actions + log lines per call
MAX_HOST_CALLS = 1000  # shared.* calls per call (they are not counted by the budget)
HOOK_TICK = 1000  # instructions between two budget checks

EVENT_BYTES = {name: name.encode() for name in ev.EVENTS}
DIR_BYTES = {name: name.encode() for name in ev.DIRS}
OPCODE_BYTES = {number: name.encode() for number, name in ev.OPCODE_NAMES.items()}
_ACTIONS_SPEC = ";".join(f"{event}={','.join(sorted(names))}" for event, names in ev.ACTIONS.items()).encode()
_PROTECTED_SPEC = " ".join(sorted(PROTECTED_HEADERS)).encode()
_LOAD = b"__load"
_HOST = b"host"
_OK = b"ok"
_FILTER_KEYS = frozenset({"dir", "opcodes", "payload", "max_message_size", "max_size", "fin_only", "min_len"})
_LUA_POSITION = re.compile(r"(?s)(.*?):(\d+): (.*)")


def _deny_attribute(obj, name, is_setting):
    raise AttributeError("Lua plugins have no access to Python objects")


def to_bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


def conn_args(event: str, session) -> tuple:
    """The leading arguments of every per-connection event: event, conn, addr, pool, member."""
    return (EVENT_BYTES[event], session.lua_id, to_bytes(session.client_addr),
            to_bytes(session.current_pool()), to_bytes(session.current_member()))


def _text(value, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} must be a string, got {type(value).__name__}")


def _lua_module(runtime: str, path: str):
    names = RUNTIMES.get(runtime)
    if names is None:
        raise PluginLoadError(path, None, f'unknown runtime {runtime!r}; use "lua54" (default) or "luajit"')
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise PluginLoadError(path, None, f'runtime "{runtime}" needs {" or ".join(names)}, which this lupa '
                          f'installation does not include; use runtime = "lua54"')


def _load_error(path: str, chunk_name: str, message: str) -> PluginLoadError:
    match = _LUA_POSITION.match(message)
    if match and match.group(1) == chunk_name:
        return PluginLoadError(path, int(match.group(2)), match.group(3))
    if message.startswith(chunk_name + ": "):
        message = message[len(chunk_name) + 2:]
    return PluginLoadError(path, None, message)


class LuaPlugin(LoadedPlugin):
    """A Lua plugin file loaded into its own sandboxed runtime."""

    kind = "lua"

    def __init__(self, path: str, *, source: bytes | None = None, options: Mapping[str, Any] | None = None,
                 on_error: str | None = None, listeners: tuple[str, ...] | None = None,
                 runtime: str | None = None, limits: Limits | None = None,
                 shared: SharedStore | None = None, index: int = 0) -> None:
        if source is None:
            try:
                with open(path, "rb") as file:
                    source = file.read()
            except OSError as exc:
                raise PluginLoadError(path, None, f"cannot read the plugin file: {exc.strerror or exc}") from None
        self.runtime = runtime or "lua54"
        self._module = _lua_module(self.runtime, path)
        self._lua_error = self._module.LuaError
        self._source = source
        # Lua cuts chunk names in messages to ~60 characters ("...tail"), so a long path is
        # shown by its file name; messages then read "route.lua:12: ...".
        self.chunk_name = path if len(path) <= 55 else os.path.basename(path)
        self._options = dict(options or {})
        self._shared = shared if shared is not None else SharedStore()
        limits = limits or Limits()
        self._jit = self.runtime == "luajit"
        self.memory_capped = True
        raw = self._start(path, limits)
        meta_name, meta_priority, meta_on_error = raw[2], raw[3], raw[4]
        name = self._meta_text(path, meta_name, "P.name") if meta_name is not None else _stem(path)
        priority = meta_priority if meta_priority is not None else DEFAULT_PRIORITY
        if isinstance(priority, float) and priority.is_integer():
            priority = int(priority)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
            raise PluginLoadError(path, None, f"P.priority must be an integer 0..1000 (lower runs first), got {priority!r}")
        declared = self._meta_text(path, meta_on_error, "P.on_error") if meta_on_error is not None else None
        policy = on_error or declared or "abort"
        if policy not in ON_ERROR:
            raise PluginLoadError(path, None, f"on_error must be abort, continue or disable, got {policy!r}")
        super().__init__(name=name, path=path, priority=priority, on_error=policy, listeners=listeners,
                         index=index, limits=limits)
        self._subscribe(path, self._records() if raw[5] else ())
        if self._jit:
            self.log.emit("warn", "runs on LuaJIT: no instruction budget (a runaway loop hangs the worker)"
                          + ("" if self.memory_capped else " and no memory cap") + "; use it for trusted code only")

    # -- runtime lifecycle ------------------------------------------------------------
    def _start(self, path: str, limits: Limits) -> tuple:
        """Create the runtime, run the prelude, load the plugin; returns the load result."""
        kwargs = dict(encoding=None, register_eval=False, register_builtins=False,
                      unpack_returned_tuples=True, attribute_filter=_deny_attribute, max_memory=limits.memory)
        try:
            runtime = self._module.LuaRuntime(**kwargs)
        except Exception:
            if not self._jit:
                raise
            del kwargs["max_memory"]  # LuaJIT GC64 builds may refuse a custom allocator
            runtime = self._module.LuaRuntime(**kwargs)
            self.memory_capped = False
        tick = min(HOOK_TICK, max(100, limits.instructions // 10))
        budget_ticks = 0 if self._jit else math.ceil(limits.instructions / tick)
        self._runtime = runtime
        self._api = runtime.execute(PRELUDE, budget_ticks, tick, MAX_RECORDS, MAX_HOST_CALLS,
                                    _PROTECTED_SPEC, _ACTIONS_SPEC)
        self._sync = self._api[b"sync"]
        self._release = self._api[b"release"]
        self._records = self._api[b"records"]
        self._new_worker()
        try:
            options = self._to_lua(self._options, "options")
        except (TypeError, ValueError) as exc:
            raise PluginLoadError(path, None, str(exc)) from None
        try:
            raw = self._send((_LOAD, self._source, b"@" + self.chunk_name.encode("utf-8", "surrogateescape"), options))
            while raw is not None and raw[0] == _HOST:
                raw = self._send(self._host_call(raw))
        except self._lua_error as exc:
            raise PluginLoadError(path, None, f"loading failed: {exc}") from None
        if raw[0] != _OK or raw[1] != b"meta":
            message = raw[2].decode("utf-8", "replace") if isinstance(raw[2], bytes) else str(raw[2])
            raise _load_error(path, self.chunk_name, message)
        return raw

    def _new_worker(self) -> None:
        worker = self._api[b"new_worker"]()
        self._send = worker.send

    def restart(self) -> None:
        """A fresh runtime from the source read at load (live connections lose their Lua vars)."""
        self._start(self.path, self.limits)

    def _to_lua(self, value, where: str):
        if value is None or isinstance(value, (bool, int, float, bytes)):
            return value
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, Mapping):
            table = {}
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise TypeError(f"{where}: keys must be strings, got {key!r}")
                table[self._to_lua(key, where)] = self._to_lua(item, f"{where}.{key}")
            return self._runtime.table_from(table)
        if isinstance(value, (list, tuple)):
            return self._runtime.table_from([self._to_lua(item, f"{where}[{i}]") for i, item in enumerate(value, 1)])
        raise TypeError(f"{where}: {type(value).__name__} values cannot be handed to Lua "
                        f"(strings, numbers, booleans, lists and tables only)")

    @staticmethod
    def _meta_text(path: str, value, what: str) -> str:
        if not isinstance(value, bytes) or not value:
            raise PluginLoadError(path, None, f"{what} must be a non-empty string, got {value!r}")
        return value.decode("utf-8", "replace")

    def _subscribe(self, path: str, records: tuple) -> None:
        handlers: list[str] = []
        filters: dict[str, dict[str, Any]] = {}
        for i in range(0, len(records), 4):
            tag, a, b, c = records[i:i + 4]
            if tag == b"handler":
                handlers.append(a.decode())
            elif tag in (b"filter", b"filter_list", b"filter_item"):
                event, key = a.decode("utf-8", "replace"), b.decode("utf-8", "replace")
                spec = filters.setdefault(event, {})
                if key not in _FILTER_KEYS:
                    raise PluginLoadError(path, None, f"P.filters.{event}: unknown filter {key!r}; "
                                          f"filters are {', '.join(sorted(_FILTER_KEYS))}")
                value = c.decode("utf-8", "replace") if isinstance(c, bytes) else c
                if tag == b"filter":
                    spec[key] = value
                elif tag == b"filter_list":
                    spec[key] = []
                else:
                    spec[key].append(value)
            else:
                self._replay(tag, a, b)
        if not handlers:
            raise PluginLoadError(path, None, f"the plugin table has no event functions (P.HTTP_REQUEST, P.WS_FRAME, ...); "
                                  f"events are {', '.join(ev.EVENTS)}")
        for name in handlers:
            if name not in ev.EVENTS:
                raise PluginLoadError(path, None, f"P.{name} is not an event; events are {', '.join(ev.EVENTS)}")
        for event in filters:
            if event not in handlers:
                raise PluginLoadError(path, None, f"P.filters.{event} is set but there is no P.{event} function")
        for order, event in enumerate(sorted(handlers, key=ev.EVENTS.index)):
            try:
                filt = ev.Filter.build(event, **filters.get(event, {}))
            except (TypeError, ValueError) as exc:
                raise PluginLoadError(path, None, f"P.filters.{event}: {exc}") from None
            self.subscriptions.append(Subscription(self, event, filt, None, False, order))

    # -- calls ------------------------------------------------------------------------
    def call(self, args: tuple) -> tuple | None:
        """Send one job to the worker; serve its ``shared.*`` requests; return its answer.

        The frame path inlines this as ``raw = plugin._send(args)`` + ``serve_host(raw)`` and
        turns a LuaError into a PluginError with ``worker_failed``.
        """
        try:
            raw = self._send(args)
            while raw is not None and raw[0] == _HOST:
                raw = self._send(self._host_call(raw))
            return raw
        except self._lua_error as exc:
            raise self.worker_failed(exc, args[0].decode()) from None

    def serve_host(self, raw: tuple) -> tuple | None:
        """Answer ``shared.*`` requests until the worker is done with the job."""
        while raw is not None and raw[0] == _HOST:
            raw = self._send(self._host_call(raw))
        return raw

    def is_lua_error(self, exc: Exception) -> bool:
        return isinstance(exc, self._lua_error)

    def worker_failed(self, exc: Exception, event: str) -> PluginError:
        """The worker coroutine died (memory exhausted in trusted code): replace it."""
        kind = "memory" if isinstance(exc, MemoryError) else "error"
        try:
            self._new_worker()
        except Exception:
            self.restart()
        return PluginError(self.name, event, kind, f"the Lua worker failed and was replaced: {exc}")

    def _host_call(self, raw: tuple) -> tuple:
        op, key, a, b = raw[1], raw[2], raw[3], raw[4]
        store = self._shared
        try:
            if op == b"get":
                value = store.get(key)
            elif op == b"set":
                value = store.set(key, a, b)
            elif op == b"add":
                value = store.add(key, a, b)
            elif op == b"incr":
                value = store.incr(key, a, b)
            elif op == b"touch":
                value = store.touch(key, a)
            elif op == b"delete":
                value = store.delete(key)
            else:
                return (False, b"unknown shared operation")
        except (TypeError, ValueError) as exc:
            return (False, f"shared.{op.decode()}: {exc}".encode("utf-8", "replace"))
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        return (True, value)

    def sync(self, session) -> None:
        """Create/refresh this connection's ctx table (for plugins that only see frames)."""
        self._sync(session.lua_id, to_bytes(session.client_addr), to_bytes(session.current_pool()),
                   to_bytes(session.current_member()))

    def release(self, conn_id) -> None:
        self._release(conn_id)

    def memory_kib(self) -> float:
        return self._api[b"memory_kib"]()

    def decode(self, event: str, raw: tuple) -> tuple[Verdict | None, list, list]:
        """(verdict, ctx operations, header edits) from a worker answer; raises PluginError."""
        if raw is None:
            return None, [], []
        ops: list[tuple] = []
        edits: list[tuple] = []
        headers: list[tuple[str, str]] = []
        records = self._records() if raw[5] else ()
        if records and type(records) is not tuple:
            records = (records,)
        for i in range(0, len(records), 4):
            tag, a, b, c = records[i:i + 4]
            if tag == b"log":
                self.log.emit(a.decode("ascii", "replace"), b.decode("utf-8", "replace"))
            elif tag == b"metric":
                self.stats.metrics[a.decode("utf-8", "replace")] += b
            elif tag == b"set_header":
                edits.append(("set", a.decode("latin-1"), b.decode("latin-1")))
            elif tag == b"del_header":
                edits.append(("del", a.decode("latin-1"), None))
            elif tag == b"resp_header":
                headers.append((a.decode("latin-1"), b.decode("latin-1")))
            else:
                ops.append((tag.decode("ascii", "replace"), a, b, c))
        if raw[0] != _OK:
            message = raw[2].decode("utf-8", "replace") if isinstance(raw[2], bytes) else str(raw[2])
            raise PluginError(self.name, event, raw[1].decode("ascii", "replace"), message)
        try:
            ops = [check_op(event, op) for op in ops]
            verdict = None if raw[1] is None else _verdict(raw[1], raw[2], raw[3], raw[4], headers)
        except (TypeError, ValueError) as exc:
            raise PluginError(self.name, event, "invalid", str(exc)) from None
        return verdict, ops, edits

    def _replay(self, tag, a, b) -> None:
        if tag == b"log":
            self.log.emit(a.decode("ascii", "replace"), b.decode("utf-8", "replace"))
        elif tag == b"metric":
            self.stats.metrics[a.decode("utf-8", "replace")] += b


def _verdict(kind: bytes, a1, a2, a3, headers: list[tuple[str, str]]) -> Verdict:
    if kind == b"drop":
        return DROP
    if kind == b"replace":
        if not isinstance(a1, bytes):
            raise TypeError(f'"replace" needs the new payload (a string), got {type(a1).__name__}')
        return replace(a1)
    if kind == b"close":
        return close(1000 if a1 is None else a1, b"" if a2 is None else a2)
    if kind == b"respond":
        if a1 is None:
            raise TypeError('"respond" needs a status, like return "respond", 403, "forbidden"')
        body = b"" if a2 is None else (str(a2).encode() if isinstance(a2, (int, float)) else a2)
        return respond(a1, body, headers)
    if kind == b"redirect":
        return redirect(_text(a1, "redirect url") if a1 is not None else "", 302 if a2 is None else a2)
    if kind == b"reselect":
        return reselect(None if a1 is None else _text(a1, "reselect pool"))
    if kind == b"reject":
        return REJECT
    raise ValueError(f"unknown verdict {kind.decode('utf-8', 'replace')!r}; verdicts are drop, replace, "
                     f"close, respond, redirect, reselect, reject")


def _stem(path: str) -> str:
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".lua") else base


def _latin1(value: str | None) -> bytes | None:
    return None if value is None else value.encode("latin-1", "replace")


def _flat_headers(headers) -> list[bytes]:
    flat: list[bytes] = []
    for name, value in headers:
        flat.append(name.encode("latin-1", "replace"))
        flat.append(value.encode("latin-1", "replace"))
    return flat


def event_args(event: str, session, obj) -> tuple:
    """The worker arguments of a per-connection event (the prelude's BUILD[event] layout)."""
    head = conn_args(event, session)
    if event == ev.HTTP_REQUEST:
        return (*head, _latin1(obj.method), _latin1(obj.path), _latin1(obj.query_string), _latin1(obj.host),
                _latin1(obj.upgrade), *_flat_headers(obj.headers))
    if event == ev.HTTP_RESPONSE:
        return (*head, obj.status, _latin1(obj.reason), *_flat_headers(obj.headers))
    if event == ev.LB_SELECTED or event == ev.LB_FAILED:
        return (*head, to_bytes(obj.pool), to_bytes(obj.member), obj.attempt, to_bytes(obj.reason), obj.status,
                *(to_bytes(m) for m in obj.tried))
    if event == ev.WS_CLOSE:
        return (*head, DIR_BYTES[obj.dir], obj.code, to_bytes(obj.reason))
    return head
