"""PluginChain: ordering, filters, per-plugin state, error policy, circuit breaker, loading."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from wsproxy.plugin import Plugin, close, drop, on, replace
from wsproxy.scripting.chain import PluginChain
from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import Limits
from wsproxy.scripting.loader import PluginSpec, load_plugin, load_plugins
from wsproxy.scripting.lua import LuaPlugin
from wsproxy.scripting.objects import Request
from wsproxy.scripting.python_plugins import PythonPlugin
from wsproxy.scripting.shared import SharedStore

FIXTURES = Path(__file__).parent / "plugin_fixtures"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def host(cls, *, on_error=None, shared=None, index=0) -> PythonPlugin:
    instance = cls()
    plugin = PythonPlugin(instance, path="<test>", on_error=on_error, listeners=None, limits=Limits(), index=index)
    instance.log, instance.metric, instance.shared = plugin.log, plugin.metric, shared or SharedStore()
    return plugin


def lua(tmp_path, body: str, name: str, **kwargs) -> LuaPlugin:
    path = tmp_path / f"{name}.lua"
    path.write_text(body)
    return LuaPlugin(str(path), **kwargs)


def calls(plugin) -> int:
    return plugin.stats.calls


# -- order ------------------------------------------------------------------------------------

def test_priority_then_config_order_across_languages(tmp_path):
    store = SharedStore()
    mark = 'shared.set("order", (shared.get("order") or "") .. "{}")'

    def lua_plugin(name, priority):
        head = f'local P = {{ name = "{name}"' + (f", priority = {priority}" if priority is not None else "") + " }"
        return lua(tmp_path, f"{head}\nfunction P.HTTP_REQUEST(ctx, req) {mark.format(name)} end\nreturn P\n",
                   name, shared=store)

    def py_plugin(name, prio):
        class P(Plugin):
            priority = prio

            @on("HTTP_REQUEST")
            def req(self, ctx, req):
                self.shared.set("order", (self.shared.get("order") or "") + name)

        P.name = name
        return host(P, shared=store)

    plugins = [lua_plugin("a", None), py_plugin("b", 10), lua_plugin("c", 10), py_plugin("d", 1000),
               lua_plugin("e", 0), py_plugin("f", 500)]
    chain = PluginChain(plugins)
    assert [s.plugin.name for s in chain.hooks("HTTP_REQUEST")] == ["e", "b", "c", "a", "f", "d"]
    asyncio.run(chain.http_request(chain.session(1), Request("GET", "/", [])))
    assert store.get("order") == "ebcafd"


def test_handlers_of_one_plugin_keep_definition_order():
    class P(Plugin):
        @on("WS_FRAME")
        def second_name_first(self, ctx, f):
            ctx.vars.setdefault("seen", []).append("first")

        @on("WS_FRAME")
        def a_second(self, ctx, f):
            ctx.vars["seen"].append("second")

    plugin = host(P)
    chain = PluginChain([plugin])
    session = chain.session(1)
    chain.ws_frame(session, "client", 1, True, 1, b"x")
    assert session.view(plugin).vars["seen"] == ["first", "second"]


def test_terminal_verdict_stops_the_chain_and_replace_chains(tmp_path):
    upper = lua(tmp_path, 'local P = { priority = 1 }\nfunction P.WS_MESSAGE(ctx, m) return "replace", m.payload:upper() end\nreturn P\n', "upper")

    class Exclaim(Plugin):
        priority = 2

        @on("WS_MESSAGE")
        def m(self, ctx, m):
            assert m.len == len(m.payload)
            return replace(m.payload + b"!")

    class Guard(Plugin):
        priority = 3

        @on("WS_MESSAGE")
        def m(self, ctx, m):
            if b"STOP" in m.payload:
                return close(1008, "stop")

    class Never(Plugin):
        priority = 4

        @on("WS_MESSAGE")
        def m(self, ctx, m):
            return drop()

    never = host(Never)
    chain = PluginChain([host(Guard), never, host(Exclaim), upper])
    session = chain.session(1)
    outcome = chain.ws_message(session, "client", 1, b"hi")
    assert outcome.verdict.kind == "drop" and outcome.plugin == "Never"
    assert calls(never) == 1
    outcome = chain.ws_message(session, "client", 1, b"stop")
    assert outcome.verdict == close(1008, "stop") and outcome.plugin == "Guard"
    assert calls(never) == 1


def test_replace_result_is_the_final_payload(tmp_path):
    a = lua(tmp_path, 'return { priority = 1, WS_FRAME = function(ctx, f) return "replace", f.payload .. "a" end }', "a")

    class B(Plugin):
        priority = 2

        @on("WS_FRAME")
        def f(self, ctx, f):
            return replace(f.payload + b"b")

    outcome = PluginChain([a, host(B)]).ws_frame(PluginChain([]).session(1), "client", 1, True, 1, b"x")
    assert outcome.verdict == replace(b"xab") and outcome.plugin == "B"


# -- filters ----------------------------------------------------------------------------------

def test_filters_skip_calls_before_building_events(tmp_path, monkeypatch):
    lua_sub = lua(tmp_path, """
local P = { filters = { WS_FRAME = { dir = "client", opcodes = {"text"}, fin_only = true, min_len = 3, payload = 2 } } }
function P.WS_FRAME(ctx, f) metric.incr("seen"); metric.incr("payload:" .. tostring(f.payload)) end
return P
""", "filtered")

    class Py(Plugin):
        @on("WS_FRAME", dir="client", opcodes=("text",), fin_only=True, min_len=3, payload=2)
        def f(self, ctx, f):
            self.metric.incr("payload:" + repr(f.payload))

        @on("WS_MESSAGE", max_message_size=4, payload=False)
        def m(self, ctx, m):
            self.metric.incr("message:" + repr(m.payload))

    py = host(Py)
    chain = PluginChain([lua_sub, py])
    built = []
    import wsproxy.scripting.chain as chain_module
    real_frame = chain_module.Frame
    monkeypatch.setattr(chain_module, "Frame", lambda *a: built.append(a) or real_frame(*a))
    session = chain.session(1)
    chain.ws_frame(session, "server", 1, True, 5, b"hello")   # dir
    chain.ws_frame(session, "client", 2, True, 5, b"hello")   # opcode
    chain.ws_frame(session, "client", 1, False, 5, b"hello")  # fin_only
    chain.ws_frame(session, "client", 1, True, 2, b"he")      # min_len
    assert built == [] and calls(lua_sub) == 0 and calls(py) == 0
    chain.ws_frame(session, "client", 1, True, 5, b"hello")
    assert len(built) == 1 and calls(lua_sub) == 1
    assert dict(lua_sub.stats.metrics) == {"seen": 1, "payload:he": 1}
    assert py.stats.metrics["payload:b'he'"] == 1
    chain.ws_message(session, "client", 1, b"12345")  # larger than max_message_size
    chain.ws_message(session, "client", 1, b"1234")
    assert py.stats.metrics == {"payload:b'he'": 1, "message:None": 1}


def test_hooks_and_limits_for_the_relay_mode(tmp_path):
    route = load_plugin(str(FIXTURES / "route.lua"))[0]  # HTTP_REQUEST + WS_MESSAGE
    assert PluginChain([]).frame_events == frozenset()

    class Head(Plugin):
        @on("WS_FRAME", dir="server", payload=16)
        def f(self, ctx, f):
            pass

        @on("WS_MESSAGE", dir="server", max_size=100)
        def m(self, ctx, m):
            pass

    chain = PluginChain([route, host(Head)])
    assert chain.frame_events == {"WS_FRAME", "WS_MESSAGE"}
    assert not chain.hooks("WS_FRAME", "client") and len(chain.hooks("WS_FRAME", "server")) == 1
    assert chain.payload_limit("WS_FRAME", "server") == 16 and chain.payload_limit("WS_FRAME", "client") == 0
    assert chain.payload_limit("WS_MESSAGE", "server") is None
    assert chain.message_limit("server") is None  # route.lua wants every message
    assert PluginChain([host(Head)]).message_limit("server") == 100
    assert not chain.hooks("LB_SELECTED")


def test_no_plugins_costs_nothing():
    chain = PluginChain([])
    session = chain.session(1)
    assert chain.ws_frame(session, "client", 1, True, 1, b"x") is None
    assert chain.client_accepted(session) is None
    assert asyncio.run(chain.http_request(session, Request("GET", "/", []))) is None
    assert chain.client_closed(session) is None


# -- per-connection state -----------------------------------------------------------------------

def test_vars_are_private_to_each_plugin_and_connection(tmp_path):
    class A(Plugin):
        @on("WS_MESSAGE")
        def m(self, ctx, m):
            ctx.vars["n"] = ctx.vars.get("n", 0) + 1
            ctx.vars["who"] = "A"

    class B(Plugin):
        @on("WS_MESSAGE")
        def m(self, ctx, m):
            assert "who" not in ctx.vars or ctx.vars["who"] == "B"
            ctx.vars["who"] = "B"

    lua_a = lua(tmp_path, 'return { WS_MESSAGE = function(ctx, m) ctx.vars.who = "LA" end }', "la")
    lua_b = lua(tmp_path, 'return { WS_MESSAGE = function(ctx, m) assert(ctx.vars.who == nil or ctx.vars.who == "LB"); ctx.vars.who = "LB" end }', "lb")
    a, b = host(A), host(B)
    chain = PluginChain([a, b, lua_a, lua_b])
    one, two = chain.session(1), chain.session(2)
    for _ in range(2):
        assert chain.ws_message(one, "client", 1, b"x") is None
    assert chain.ws_message(two, "client", 1, b"x") is None
    assert one.view(a).vars == {"n": 2, "who": "A"} and one.view(b).vars == {"who": "B"}
    assert two.view(a).vars == {"n": 1, "who": "A"}
    assert lua_a.stats.errors == {} and lua_b.stats.errors == {}


def test_ctx_disable_switches_a_handler_off_for_one_connection():
    class P(Plugin):
        @on("WS_FRAME")
        def f(self, ctx, f):
            if f.payload == b"enough":
                ctx.disable("WS_FRAME")

    plugin = host(P)
    chain = PluginChain([plugin])
    one, two = chain.session(1), chain.session(2)
    outcome = chain.ws_frame(one, "client", 1, True, 6, b"enough")
    assert outcome.actions.disabled == [("P", "WS_FRAME")]
    assert not one.hooks("WS_FRAME", "client") and two.hooks("WS_FRAME", "client")
    chain.ws_frame(one, "client", 1, True, 1, b"x")
    chain.ws_frame(two, "client", 1, True, 1, b"x")
    assert calls(plugin) == 2


# -- error policy -------------------------------------------------------------------------------

class Boom(Plugin):
    @on("WS_MESSAGE")
    def m(self, ctx, m):
        if m.payload == b"boom":
            raise RuntimeError("kaput")
        ctx.send("client", "echo")

    @on("WS_CLOSE")
    def c(self, ctx, c):
        raise RuntimeError("closing")


class After(Plugin):
    priority = 900

    @on("WS_MESSAGE")
    def m(self, ctx, m):
        self.metric.incr("after")


def test_on_error_abort():
    boom, after = host(Boom), host(After)
    chain = PluginChain([boom, after])
    outcome = chain.ws_message(chain.session(1), "client", 1, b"boom")
    assert outcome.aborted and outcome.plugin == "Boom"
    assert (outcome.error.plugin, outcome.error.event, outcome.error.kind) == ("Boom", "WS_MESSAGE", "error")
    assert "RuntimeError: kaput" in outcome.error.message
    assert after.stats.metrics["after"] == 0
    assert boom.stats.errors == {("WS_MESSAGE", "error"): 1}


def test_on_error_continue():
    boom, after = host(Boom, on_error="continue"), host(After)
    chain = PluginChain([boom, after])
    session = chain.session(1)
    assert chain.ws_message(session, "client", 1, b"boom") is None
    assert after.stats.metrics["after"] == 1
    assert chain.ws_message(session, "client", 1, b"ok").actions.sends == [("client", b"echo", "text")]


def test_on_error_disable_is_per_connection():
    boom = host(Boom, on_error="disable")
    chain = PluginChain([boom, host(After)])
    one, two = chain.session(1), chain.session(2)
    assert chain.ws_message(one, "client", 1, b"boom") is None
    assert chain.ws_message(one, "client", 1, b"ok") is None  # Boom no longer called here
    assert chain.ws_message(two, "client", 1, b"ok").actions.sends == [("client", b"echo", "text")]
    assert calls(boom) == 2


def test_errors_at_close_are_only_logged(caplog):
    chain = PluginChain([host(Boom)])
    with caplog.at_level(logging.ERROR, logger="wsproxy.plugin"):
        assert chain.ws_close(chain.session(1), "client", 1000) is None
    assert "WS_CLOSE failed (error, on_error=abort): RuntimeError: closing" in caplog.text


def test_error_logs_carry_the_traceback_and_are_rate_limited(caplog):
    clock = Clock()
    chain = PluginChain([host(Boom, on_error="continue")], clock=clock)
    session = chain.session(1)
    with caplog.at_level(logging.ERROR, logger="wsproxy.plugin"):
        for _ in range(5):
            chain.ws_message(session, "client", 1, b"boom")
        clock.now += 1.5
        chain.ws_message(session, "client", 1, b"boom")
    records = [r for r in caplog.records if r.name == "wsproxy.plugin.Boom"]
    assert len(records) == 2
    assert records[0].exc_info and "kaput" in str(records[0].exc_info[1])
    assert "(4 more errors since the last report)" in records[1].getMessage()


def test_lua_error_message_has_file_and_line(tmp_path):
    plugin = lua(tmp_path, "local P = {}\nfunction P.WS_FRAME(ctx, f)\n  local t = nil\n  return t.x\nend\nreturn P\n", "bad")
    outcome = PluginChain([plugin]).ws_frame(PluginChain([]).session(1), "client", 1, True, 1, b"x")
    assert outcome.error.kind == "error"
    assert outcome.error.message.startswith(f"{plugin.chunk_name}:4: attempt to index a nil value")


def test_abort_discards_actions_of_the_failing_handler():
    class Fail(Plugin):
        @on("HTTP_REQUEST")
        def req(self, ctx, req):
            ctx.use_pool("x")
            req.set_header("X-A", "1")
            raise ValueError("no")

    req = Request("GET", "/", [])
    chain = PluginChain([host(Fail)])
    outcome = asyncio.run(chain.http_request(chain.session(1), req))
    assert outcome.aborted and outcome.actions is None and req.headers == []


# -- circuit breaker ------------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["abort", "continue"])
def test_circuit_breaker_trips_and_recovers(tmp_path, caplog, on_error):
    clock = Clock()
    plugin = lua(tmp_path, """
local P = {}
function P.WS_MESSAGE(ctx, m)
  if m.payload == "boom" then error("kaput") end
  return "replace", "ok"
end
return P
""", "flaky", on_error=on_error)
    plugin.breaker.configure(threshold=3, window=10.0, cooldown=30.0)
    chain = PluginChain([plugin], clock=clock)
    session = chain.session(1)
    caplog.set_level(logging.INFO, logger="wsproxy.plugin")
    for _ in range(3):
        clock.now += 1
        chain.ws_message(session, "client", 1, b"boom")
    assert "circuit breaker tripped: 3 errors within 10 s; out of service for 30 s" in caplog.text
    before = calls(plugin)
    outcome = chain.ws_message(session, "client", 1, b"fine")
    assert calls(plugin) == before  # not called while open
    if on_error == "abort":
        assert outcome.aborted and outcome.error.kind == "breaker"  # fails closed
    else:
        assert outcome is None  # skipped
    runtime = plugin._runtime
    clock.now += 31
    outcome = chain.ws_message(session, "client", 1, b"fine")
    assert outcome.verdict == replace(b"ok")
    assert plugin._runtime is not runtime  # a fresh Lua runtime after the cool-down
    assert "circuit breaker closed: back in service with a fresh Lua runtime" in caplog.text


def test_errors_spread_out_do_not_trip_the_breaker():
    clock = Clock()
    plugin = host(Boom, on_error="continue")
    plugin.breaker.configure(threshold=3, window=10.0, cooldown=30.0)
    chain = PluginChain([plugin], clock=clock)
    session = chain.session(1)
    for _ in range(10):
        clock.now += 6
        chain.ws_message(session, "client", 1, b"boom")
    assert plugin.breaker.trips == 0 and plugin.breaker.open_until == 0


def test_default_breaker_thresholds():
    plugin = host(Boom)
    assert (plugin.breaker.threshold, plugin.breaker.window, plugin.breaker.cooldown) == (50, 10.0, 30.0)


# -- loading --------------------------------------------------------------------------------------

def test_load_plugins_from_specs_and_dicts():
    store = SharedStore()
    plugins = load_plugins([
        PluginSpec(str(FIXTURES / "route.lua"), listeners=("public",)),
        {"path": str(FIXTURES / "two_plugins.py"), "options": {"token": "x"}, "on_error": "continue",
         "limits": {"timeout": 1.5}},
        {"path": "options.lua", "options": {"limits": [1, 2]}, "limits": {"memory": 1 << 20, "instructions": 50_000}},
    ], shared=store, base_dir=str(FIXTURES))
    assert [p.name for p in plugins] == ["route", "auth", "audit", "options-lua"]
    assert [p.index for p in plugins] == [0, 1, 1, 2]
    assert plugins[1].on_error == "continue" and plugins[1].limits.timeout == 1.5
    assert plugins[3].limits.memory == 1 << 20 and plugins[3].path == str(FIXTURES / "options.lua")
    assert [p.name for p in PluginChain.for_listener(plugins, "public").plugins] == ["route", "auth", "audit", "options-lua"]
    assert [p.name for p in PluginChain.for_listener(plugins, "admin").plugins] == ["auth", "audit", "options-lua"]


@pytest.mark.parametrize("spec, message", [
    ({"path": "route.lua", "on_error": "explode"}, "on_error must be abort, continue or disable"),
    ({"path": "route.lua", "runtime": "lua51"}, 'runtime must be "lua54" or "luajit"'),
    ({"path": "route.py", "runtime": "lua54"}, "runtime applies to Lua plugins only"),
    ({"path": "route.py", "limits": {"memory": 1 << 20}}, "limits.memory applies to Lua plugins only"),
    ({"path": "route.lua", "limits": {"timeout": 1}}, "limits.timeout applies to Python plugins"),
    ({"path": "route.lua", "limits": {"instructions": 10}}, "limits.instructions must be an integer >= 1000"),
    ({"path": "route.lua", "limits": {"cpu": 1}}, "unknown limits key(s) cpu"),
    ({"path": "route.txt"}, "a plugin is a .lua or a .py file"),
    ({"path": "missing.py"}, "cannot read the plugin file"),
    ({"path": "route.lua", "colour": "red"}, "unknown key(s) colour"),
    ({"options": {}}, "path is missing"),
])
def test_bad_specs(spec, message):
    with pytest.raises(PluginLoadError, match=None) as info:
        load_plugins([spec], base_dir=str(FIXTURES))
    assert message in str(info.value)


def test_duplicate_names_are_refused():
    with pytest.raises(PluginLoadError, match="a plugin named 'route' is already loaded"):
        load_plugins([{"path": "route.lua"}, {"path": "route.lua"}], base_dir=str(FIXTURES))


def test_one_bad_plugin_rejects_the_whole_load():
    with pytest.raises(PluginLoadError, match="syntax_error.lua:10:"):
        load_plugins([{"path": "route.lua"}, {"path": "syntax_error.lua"}], base_dir=str(FIXTURES))


def test_stats():
    chain = PluginChain([host(Boom, on_error="continue")])
    session = chain.session(1)
    chain.ws_message(session, "client", 1, b"boom")
    chain.ws_message(session, "client", 1, b"ok")
    assert chain.stats() == {"Boom": {"calls": 2, "errors": {"WS_MESSAGE:error": 1}, "metrics": {}}}
