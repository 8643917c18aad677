"""PluginChain: the ordered plugins of one listener, dispatched event by event.

Sans-I/O: the proxy calls one method per event and acts on the ``Outcome`` (None when
every handler passed and asked for nothing). Built once per config generation and then
immutable; per-connection state lives in a ``PluginSession``. Design (plugin-api.md §2):

- **Order**: priority (0..1000, lower first, default 500), then config order, then a
  plugin's own handler order, like iRules ``priority`` (§1.1).
- **Pay for what is used** (§2.4): ``hooks(event, dir)`` and ``frame_events`` tell the proxy
  whether a route needs the inspect relay mode at all; ``payload_limit`` / ``message_limit``
  how much to unmask or buffer. Subscription filters (dir, opcodes, fin_only, min_len,
  max_message_size) are checked before any event object or Lua argument is built.
- **Verdicts**: the first terminal verdict wins and stops the chain; ``replace`` rewrites the
  payload for the handlers after it (Kong). Each event allows only the verdicts of
  ``events.VERDICTS``; another one is a plugin error (kind "invalid").
- **Actions** (``ctx.use_pool``...) are merged in chain order into ``Outcome.actions``,
  last writer wins; they and header edits are discarded if the handler fails.
- **Errors** never escape (BaseException, e.g. CancelledError, does): counted per (event,
  kind), logged at most once a second per plugin (with the traceback for Python), fed to the
  plugin's circuit breaker, then ``on_error`` decides: ``abort`` (default, fail closed) ends
  the event with verdict "abort" (the proxy answers 500 before the upgrade, a TCP close at
  CLIENT_ACCEPTED, Close 1011 after), ``continue`` passes, ``disable`` passes and stops
  calling the plugin on this connection. Errors in WS_CLOSE and CLIENT_CLOSED are only logged.
- **Async** Python handlers (HTTP_REQUEST, HTTP_RESPONSE, WS_OPEN) are awaited under
  ``asyncio.timeout(limits.timeout)``; running out is an error of kind "timeout".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable, Iterable

from wsproxy.scripting import events as ev
from wsproxy.scripting.errors import PluginError
from wsproxy.scripting.hosts import LoadedPlugin, Subscription
from wsproxy.scripting.lua import DIR_BYTES, EVENT_BYTES, OPCODE_BYTES, event_args
from wsproxy.scripting.objects import Actions, Ctx, Frame, LbInfo, Message, Request, Response, WsClose
from wsproxy.scripting.verdicts import TERMINAL, Verdict

__all__ = ["PluginChain", "PluginSession", "Outcome"]

_FRAME_B = EVENT_BYTES[ev.WS_FRAME]
_MESSAGE_B = EVENT_BYTES[ev.WS_MESSAGE]
_CONTROL = frozenset({8, 9, 10})
_ERROR_LOG_INTERVAL = 1.0  # seconds between two error lines of one plugin


class Outcome:
    """What the plugins decided for one event.

    ``verdict``: the terminal verdict (or the final ``replace`` of a frame/message), or
    None; kind "abort" means a plugin failed under ``on_error = "abort"`` (``error`` says
    which). ``plugin``: the name of the plugin that gave the verdict. ``actions``: the merged
    ctx actions (None if none).
    """

    __slots__ = ("event", "verdict", "plugin", "actions", "error")

    def __init__(self, event: str, verdict: Verdict | None = None, plugin: str | None = None,
                 actions: Actions | None = None, error: PluginError | None = None) -> None:
        self.event = event
        self.verdict = verdict
        self.plugin = plugin
        self.actions = actions
        self.error = error

    @property
    def aborted(self) -> bool:
        return self.verdict is not None and self.verdict.kind == "abort"

    def __repr__(self) -> str:
        return f"Outcome({self.event}, verdict={self.verdict!r}, plugin={self.plugin!r}, actions={self.actions!r})"


class PluginSession:
    """The plugins' state for one client connection: per-plugin ``ctx`` views and vars,
    plugins and events switched off for it. The proxy sets ``pool`` and ``member`` as it
    routes (``ctx.pool`` / ``ctx.member`` read them)."""

    __slots__ = ("chain", "id", "lua_id", "client_addr", "pool", "member", "closed", "_views", "_off",
                 "_subs_cache", "_pending")

    def __init__(self, chain: "PluginChain", conn_id: int | str, client_addr: str | None = None) -> None:
        self.chain = chain
        self.id = conn_id
        self.lua_id = conn_id.encode("utf-8", "surrogateescape") if isinstance(conn_id, str) else conn_id
        self.client_addr = client_addr
        self.pool: str | None = None
        self.member: str | None = None
        self.closed = False
        self._views: dict[LoadedPlugin, Ctx] = {}
        self._off: set[tuple[LoadedPlugin, str | None]] | None = None
        self._subs_cache: dict[tuple[str, str | None], tuple[Subscription, ...]] = {}
        self._pending: Actions | None = None

    def current_pool(self) -> str | None:
        pending = self._pending
        return pending.pool if pending is not None and pending.pool is not None else self.pool

    def current_member(self) -> str | None:
        pending = self._pending
        return pending.member if pending is not None and pending.member is not None else self.member

    def view(self, plugin: LoadedPlugin) -> Ctx:
        """``plugin``'s ctx on this connection (its ``vars`` are its own)."""
        ctx = self._views.get(plugin)
        if ctx is None:
            ctx = self._views[plugin] = Ctx(self)
        return ctx

    def disable(self, plugin: LoadedPlugin, event: str | None = None) -> None:
        """Stop calling ``plugin`` on this connection: for ``event``, or for every event."""
        if self._off is None:
            self._off = set()
        self._off.add((plugin, event))
        self._subs_cache.clear()

    def subscriptions(self, event: str, dir: str | None = None) -> tuple[Subscription, ...]:
        """The handlers still active on this connection for ``event`` (and ``dir``)."""
        subs = self.chain.hooks(event, dir)
        off = self._off
        if off is None or not subs:
            return subs
        key = (event, dir)
        cached = self._subs_cache.get(key)
        if cached is None:
            cached = self._subs_cache[key] = tuple(
                s for s in subs if (s.plugin, None) not in off and (s.plugin, event) not in off)
        return cached

    def hooks(self, event: str, dir: str | None = None) -> bool:
        """True if some handler of ``event`` is still active on this connection (when both
        frame events are off the relay can leave inspect mode)."""
        return bool(self.subscriptions(event, dir))


class _Abort(Exception):
    def __init__(self, error: PluginError) -> None:
        self.error = error


class PluginChain:
    """The plugins of one listener, in dispatch order. ``plugins`` in config order."""

    def __init__(self, plugins: Iterable[LoadedPlugin], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plugins = tuple(plugins)
        self._clock = clock
        position = {plugin: i for i, plugin in enumerate(self.plugins)}
        subs = [sub for plugin in self.plugins for sub in plugin.subscriptions]
        subs.sort(key=lambda s: (s.plugin.priority, position[s.plugin], s.order))
        self._subs: dict[str, tuple[Subscription, ...]] = {e: tuple(s for s in subs if s.event == e) for e in ev.EVENTS}
        self._dir_subs: dict[tuple[str, str | None], tuple[Subscription, ...]] = {}
        for event in ev.EVENTS:
            self._dir_subs[(event, None)] = self._subs[event]
            for d in ev.DIRS:
                self._dir_subs[(event, d)] = tuple(s for s in self._subs[event] if s.dir is None or s.dir == d)
        self._frame_subs = {d: self._dir_subs[(ev.WS_FRAME, d)] for d in ev.DIRS}
        self._message_subs = {d: self._dir_subs[(ev.WS_MESSAGE, d)] for d in ev.DIRS}
        self._lua_plugins = tuple(p for p in self.plugins if p.kind == "lua")
        self._lua_frame_plugins = tuple(p for p in self._lua_plugins
                                        if any(s.event in ev.FRAME_EVENTS for s in p.subscriptions))
        self.frame_events = frozenset(e for e in ev.FRAME_EVENTS if self._subs[e])
        self.metrics = None  # node.metrics.Metrics (set by the composition root): plugin_error()

    @classmethod
    def for_listener(cls, plugins: Iterable[LoadedPlugin], listener: str | None, **kwargs) -> "PluginChain":
        """The chain of the plugins whose ``listeners`` include ``listener`` (None = all)."""
        return cls([p for p in plugins if p.applies_to(listener)], **kwargs)

    # -- what the proxy asks at config time ------------------------------------------------
    def hooks(self, event: str, dir: str | None = None) -> tuple[Subscription, ...]:
        """The subscriptions of ``event`` in dispatch order (for ``dir`` if given); empty = no hook."""
        return self._dir_subs[(event, dir)]

    def payload_limit(self, event: str, dir: str) -> int | None:
        """Payload bytes the subscribers of a frame event read: None = all, 0 = none."""
        need = 0
        for sub in self._dir_subs[(event, dir)]:
            if sub.payload is True:
                return None
            if sub.payload is not False:
                need = max(need, sub.payload)
        return need

    def message_limit(self, dir: str) -> int | None:
        """The largest WS_MESSAGE any subscriber wants (None = no limit of their own)."""
        subs = self._message_subs[dir]
        if not subs or any(s.max_size is None for s in subs):
            return None
        return max(s.max_size for s in subs)

    def session(self, conn_id: int | str, client_addr: str | None = None) -> PluginSession:
        return PluginSession(self, conn_id, client_addr)

    def stats(self) -> dict[str, dict]:
        return {p.name: p.stats.as_dict() for p in self.plugins}

    # -- per-connection events ---------------------------------------------------------------
    def client_accepted(self, session: PluginSession) -> Outcome | None:
        return self._run(ev.CLIENT_ACCEPTED, session, None)

    async def http_request(self, session: PluginSession, req: Request) -> Outcome | None:
        return await self._run_async(ev.HTTP_REQUEST, session, req)

    def lb_selected(self, session: PluginSession, lb: LbInfo) -> Outcome | None:
        return self._run(ev.LB_SELECTED, session, lb)

    def lb_failed(self, session: PluginSession, lb: LbInfo) -> Outcome | None:
        return self._run(ev.LB_FAILED, session, lb)

    async def http_response(self, session: PluginSession, res: Response) -> Outcome | None:
        return await self._run_async(ev.HTTP_RESPONSE, session, res)

    async def ws_open(self, session: PluginSession) -> Outcome | None:
        # Lua plugins that only see frames get their ctx table (addr, pool, member) now, so
        # the frame path can pass just the connection id.
        for plugin in self._lua_frame_plugins:
            try:
                plugin.sync(session)
            except Exception as exc:  # memory: the frame path will report it
                plugin.log.emit("warn", "could not prepare the connection's ctx: %s", exc)
        return await self._run_async(ev.WS_OPEN, session, None)

    def ws_close(self, session: PluginSession, dir: str, code: int, reason: str = "") -> Outcome | None:
        return self._run(ev.WS_CLOSE, session, WsClose(dir, code, reason), dir)

    def client_closed(self, session: PluginSession) -> Outcome | None:
        """Always once per connection, last: runs the handlers, then frees the plugins' state."""
        try:
            return self._run(ev.CLIENT_CLOSED, session, None)
        finally:
            session.closed = True
            session._views.clear()
            for plugin in self._lua_plugins:
                try:
                    plugin.release(session.lua_id)
                except Exception:  # a broken runtime has nothing worth freeing
                    pass

    # -- frames and messages (the hot path) -----------------------------------------------
    def ws_frame(self, session: PluginSession, dir: str, opcode: int, fin: bool, length: int,
                 payload: bytes | None, ts: float | None = None) -> Outcome | None:
        """One frame going ``dir``; ``opcode`` is the number, ``payload`` unmasked (at least
        ``payload_limit`` bytes). None: forward it unchanged."""
        subs = self._frame_subs[dir] if session._off is None else session.subscriptions(ev.WS_FRAME, dir)
        if not subs:
            return None
        return self._data(ev.WS_FRAME, subs, session, dir, opcode, fin, length, payload, ts)

    def ws_message(self, session: PluginSession, dir: str, opcode: int, payload: bytes,
                   ts: float | None = None) -> Outcome | None:
        """One reassembled data message (opcode 1 text or 2 binary)."""
        subs = self._message_subs[dir] if session._off is None else session.subscriptions(ev.WS_MESSAGE, dir)
        if not subs:
            return None
        return self._data(ev.WS_MESSAGE, subs, session, dir, opcode, True, len(payload), payload, ts)

    def _data(self, event: str, subs: tuple[Subscription, ...], session: PluginSession, dir: str, opcode: int,
              fin: bool, length: int, payload, ts: float | None) -> Outcome | None:
        if payload is not None and type(payload) is not bytes:
            payload = bytes(payload)
        is_frame = event == ev.WS_FRAME
        outcome = None
        lua_head = None  # (event, conn, dir, opcode) as Lua arguments, built on first use
        for sub in subs:
            if sub.opcodes is not None and opcode not in sub.opcodes:
                continue
            if length < sub.min_len:
                continue
            if is_frame:
                if sub.fin_only and not fin:
                    continue
            elif sub.max_size is not None and length > sub.max_size:
                continue
            plugin = sub.plugin
            try:
                if sub.breaker.open_until and self._blocked(plugin, event):
                    continue
                if ts is None:
                    ts = self._clock()
                mode = sub.payload
                data = payload if mode is True else (None if mode is False or payload is None else payload[:mode])
                sub.calls += 1
                try:
                    if sub.is_lua:
                        if lua_head is None:
                            lua_head = (_FRAME_B if is_frame else _MESSAGE_B, session.lua_id, DIR_BYTES[dir],
                                        OPCODE_BYTES[opcode])
                        if is_frame:
                            raw = plugin._send((*lua_head, fin, length, data, ts))
                        else:
                            raw = plugin._send((*lua_head, length, data, ts))
                        if raw is None:
                            continue
                        verdict, ops, _ = plugin.decode(event, plugin.serve_host(raw))
                    else:
                        ctx = session._views.get(plugin) or session.view(plugin)
                        ctx._event = event
                        obj = (Frame if is_frame else Message)(dir, ev.OPCODE_NAMES[opcode], fin, length, data, ts)
                        try:
                            verdict = sub.handler(ctx, obj)
                        finally:
                            ops = ctx._ops
                            ctx._ops = None
                        if verdict is None and ops is None:
                            continue
                    if verdict is not None:
                        verdict = self._check_data(plugin, event, opcode, self._check(plugin, event, verdict))
                except Exception as exc:
                    if sub.is_lua and plugin.is_lua_error(exc):
                        exc = plugin.worker_failed(exc, event)
                    self._failed(plugin, event, session, exc)
                    continue
            except _Abort as stop:
                return Outcome(event, _abort_verdict(stop.error), plugin.name, None, stop.error)
            if ops:
                if outcome is None:
                    outcome = Outcome(event, actions=Actions())
                elif outcome.actions is None:
                    outcome.actions = Actions()
                self._apply(plugin, session, ops, outcome.actions)
            if verdict is not None:
                if outcome is None:
                    outcome = Outcome(event)
                outcome.verdict, outcome.plugin = verdict, plugin.name
                if verdict.kind != "replace":
                    return outcome
                payload = verdict.data  # later handlers see the new payload (Kong)
                length = len(payload)
        return outcome

    # -- the generic path of per-connection events ---------------------------------------------
    def _run(self, event: str, session: PluginSession, obj, dir: str | None = None) -> Outcome | None:
        subs = session.subscriptions(event, dir)
        if not subs:
            return None
        actions = session._pending = Actions()
        try:
            for sub in subs:
                plugin = sub.plugin
                try:
                    if sub.breaker.open_until and self._blocked(plugin, event):
                        continue
                    snapshot = obj._snapshot() if isinstance(obj, (Request, Response)) else None
                    try:
                        sub.calls += 1
                        if sub.is_lua:
                            verdict = self._call_lua(sub, event, session, obj)
                        else:
                            ctx = self._enter(sub, session, event)
                            try:
                                verdict = sub.handler(ctx) if obj is None else sub.handler(ctx, obj)
                            finally:
                                ops = ctx._ops
                                ctx._ops = None
                            verdict = self._check(plugin, event, verdict)
                            self._apply(plugin, session, ops, actions)
                    except Exception as exc:
                        if snapshot is not None:
                            obj._restore(snapshot)
                        self._failed(plugin, event, session, exc)
                        continue
                except _Abort as stop:
                    return Outcome(event, _abort_verdict(stop.error), plugin.name, None, stop.error)
                if verdict is not None:
                    return Outcome(event, verdict, plugin.name, actions if _has_any(actions) else None)
        finally:
            session._pending = None
        return Outcome(event, None, None, actions) if _has_any(actions) else None

    async def _run_async(self, event: str, session: PluginSession, obj) -> Outcome | None:
        subs = session.subscriptions(event)
        if not subs:
            return None
        if not any(s.is_async for s in subs):
            return self._run(event, session, obj)
        actions = session._pending = Actions()
        try:
            for sub in subs:
                plugin = sub.plugin
                try:
                    if sub.breaker.open_until and self._blocked(plugin, event):
                        continue
                    snapshot = obj._snapshot() if isinstance(obj, (Request, Response)) else None
                    try:
                        sub.calls += 1
                        if sub.is_lua:
                            verdict = self._call_lua(sub, event, session, obj)
                        else:
                            ctx = self._enter(sub, session, event)
                            try:
                                verdict = sub.handler(ctx) if obj is None else sub.handler(ctx, obj)
                                if sub.is_async:
                                    verdict = await self._await(plugin, event, verdict)
                            finally:
                                ops = ctx._ops
                                ctx._ops = None
                            verdict = self._check(plugin, event, verdict)
                            self._apply(plugin, session, ops, actions)
                    except Exception as exc:
                        if snapshot is not None:
                            obj._restore(snapshot)
                        self._failed(plugin, event, session, exc)
                        continue
                except _Abort as stop:
                    return Outcome(event, _abort_verdict(stop.error), plugin.name, None, stop.error)
                if verdict is not None:
                    return Outcome(event, verdict, plugin.name, actions if _has_any(actions) else None)
        finally:
            session._pending = None
        return Outcome(event, None, None, actions) if _has_any(actions) else None

    async def _await(self, plugin: LoadedPlugin, event: str, awaitable):
        limit = plugin.limits.timeout
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                return await awaitable
        except TimeoutError:
            if timer.expired():
                raise PluginError(plugin.name, event, "timeout", f"async handler took longer than {limit:g} s") from None
            raise

    @staticmethod
    def _enter(sub: Subscription, session: PluginSession, event: str) -> Ctx:
        ctx = session.view(sub.plugin)
        ctx._event = event
        ctx._ops = None
        return ctx

    def _call_lua(self, sub: Subscription, event: str, session: PluginSession, obj) -> Verdict | None:
        plugin = sub.plugin
        raw = plugin.call(event_args(event, session, obj))
        if raw is None:
            return None
        verdict, ops, edits = plugin.decode(event, raw)
        verdict = self._check(plugin, event, verdict)
        if edits:
            try:
                for op, name, value in edits:
                    if op == "set":
                        obj.set_header(name, value)
                    else:
                        obj.del_header(name)
            except (TypeError, ValueError) as exc:
                raise PluginError(plugin.name, event, "invalid", str(exc)) from None
        self._apply(plugin, session, ops, session._pending)
        return verdict

    # -- checks, actions, errors ----------------------------------------------------------------
    @staticmethod
    def _check(plugin: LoadedPlugin, event: str, verdict) -> Verdict | None:
        if verdict is None:
            return None
        if not isinstance(verdict, Verdict):
            if inspect.iscoroutine(verdict):
                verdict.close()  # a sync-only event got an awaitable: no "never awaited" warning
            raise PluginError(plugin.name, event, "invalid",
                              f"a handler returns None or a verdict (drop(), close(...), ...), not {type(verdict).__name__}")
        if verdict.kind not in ev.VERDICTS[event]:
            allowed = ", ".join(sorted(ev.VERDICTS[event])) or "nothing (return None)"
            raise PluginError(plugin.name, event, "invalid",
                              f"verdict {verdict.kind!r} is not allowed in {event}, which may return {allowed}")
        return verdict

    @staticmethod
    def _check_data(plugin: LoadedPlugin, event: str, opcode: int, verdict: Verdict) -> Verdict:
        kind = verdict.kind
        if opcode == 8 and kind != "close":
            raise PluginError(plugin.name, event, "invalid",
                              f"{kind!r} of a Close frame: the proxy owns the closing handshake (return close() or nil)")
        if kind == "replace":
            if opcode in _CONTROL and len(verdict.data) > 125:
                raise PluginError(plugin.name, event, "invalid", "a control frame payload is limited to 125 bytes")
            if opcode == 1 and event == ev.WS_MESSAGE:
                try:
                    verdict.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise PluginError(plugin.name, event, "invalid", "a text message must stay valid UTF-8") from None
        return verdict

    @staticmethod
    def _apply(plugin: LoadedPlugin, session: PluginSession, ops, actions: Actions | None) -> None:
        if not ops:
            return
        for op in ops:
            actions.apply(op, plugin.name)
            if op[0] == "disable":
                session.disable(plugin, op[1])

    def _blocked(self, plugin: LoadedPlugin, event: str) -> bool:
        """True if the breaker keeps ``plugin`` out (raises _Abort for on_error = abort)."""
        breaker = plugin.breaker
        if breaker.is_open(self._clock()):
            if plugin.on_error == "abort" and event not in ev.LOG_ONLY_EVENTS:
                plugin.stats.errors[(event, "breaker")] += 1
                raise _Abort(PluginError(plugin.name, event, "breaker",
                                         "circuit breaker open: the plugin failed too often and is out of service"))
            return True
        breaker.close()
        try:
            plugin.restart()
        except Exception as exc:  # stay out of service for another cool-down
            plugin.log.emit("error", "restart after the circuit breaker failed: %s", exc)
            breaker.open_until = self._clock() + max(breaker.cooldown, _ERROR_LOG_INTERVAL)
            if plugin.on_error == "abort" and event not in ev.LOG_ONLY_EVENTS:
                raise _Abort(PluginError(plugin.name, event, "breaker", f"restart failed: {exc}")) from None
            return True
        plugin.log.emit("info", "circuit breaker closed: back in service%s",
                        " with a fresh Lua runtime" if plugin.kind == "lua" else "")
        return False

    def _failed(self, plugin: LoadedPlugin, event: str, session: PluginSession, exc: Exception) -> None:
        """Count, log and apply ``on_error``; raises _Abort when the event must end."""
        if isinstance(exc, PluginError):
            error = exc
            trace = None
        else:
            kind = "memory" if isinstance(exc, MemoryError) else "error"
            error = PluginError(plugin.name, event, kind, f"{type(exc).__name__}: {exc}")
            trace = exc
        plugin.stats.errors[(event, error.kind)] += 1
        if self.metrics is not None:
            self.metrics.plugin_error(plugin.index)
        now = self._clock()
        if now - plugin.last_error_log >= _ERROR_LOG_INTERVAL:
            more = f" ({plugin.suppressed_errors} more errors since the last report)" if plugin.suppressed_errors else ""
            plugin.log.emit("error", "%s failed (%s, on_error=%s): %s%s", event, error.kind, plugin.on_error,
                            error.message, more, exc_info=trace)
            plugin.last_error_log = now
            plugin.suppressed_errors = 0
        else:
            plugin.suppressed_errors += 1
        breaker = plugin.breaker
        if breaker.record_error(now):
            plugin.log.emit("warn", "circuit breaker tripped: %d errors within %g s; out of service for %g s",
                            breaker.threshold, breaker.window, breaker.cooldown)
        if event in ev.LOG_ONLY_EVENTS or plugin.on_error == "continue":
            return
        if plugin.on_error == "disable":
            session.disable(plugin)
            return
        raise _Abort(error)


def _abort_verdict(error: PluginError) -> Verdict:
    return Verdict("abort", reason=f"plugin {error.plugin} failed in {error.event}")


def _has_any(actions: Actions) -> bool:
    return bool(actions.pool or actions.member or actions.hash_key or actions.close or actions.sends
                or actions.disabled)
