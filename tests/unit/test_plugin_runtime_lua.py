"""Lua plugins: the objects, actions and verdicts of PLUGINS.md, options, shared, load errors."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from wsproxy.scripting.chain import PluginChain
from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import Limits
from wsproxy.scripting.loader import load_plugin
from wsproxy.scripting.lua import LuaPlugin
from wsproxy.scripting.objects import LbInfo, Request, Response
from wsproxy.scripting.shared import SharedStore
from wsproxy.scripting.verdicts import Verdict

FIXTURES = Path(__file__).parent / "plugin_fixtures"


def lua(tmp_path, body: str, name: str = "p", **kwargs) -> LuaPlugin:
    path = tmp_path / f"{name}.lua"
    path.write_text(body)
    return LuaPlugin(str(path), **kwargs)


def handler(tmp_path, event: str, body: str, **kwargs) -> tuple[LuaPlugin, PluginChain]:
    args = {"CLIENT_ACCEPTED": "ctx", "WS_OPEN": "ctx", "CLIENT_CLOSED": "ctx", "HTTP_REQUEST": "ctx, req",
            "HTTP_RESPONSE": "ctx, res", "LB_SELECTED": "ctx, lb", "LB_FAILED": "ctx, lb",
            "WS_FRAME": "ctx, f", "WS_MESSAGE": "ctx, m", "WS_CLOSE": "ctx, c"}[event]
    plugin = lua(tmp_path, f"local P = {{}}\nfunction P.{event}({args})\n{body}\nend\nreturn P\n", **kwargs)
    return plugin, PluginChain([plugin])


def request(target="/", headers=None, method="GET") -> Request:
    return Request(method, target, list(headers or [("Host", "Example.COM:8080")]))


def run(chain: PluginChain, event: str, session=None, obj=None):
    session = session or chain.session(7, "10.0.0.1:5555")
    if event == "HTTP_REQUEST":
        return asyncio.run(chain.http_request(session, obj or request()))
    if event == "HTTP_RESPONSE":
        return asyncio.run(chain.http_response(session, obj or Response(101, [("Upgrade", "websocket")])))
    if event == "WS_OPEN":
        return asyncio.run(chain.ws_open(session))
    if event == "CLIENT_ACCEPTED":
        return chain.client_accepted(session)
    if event == "LB_SELECTED":
        return chain.lb_selected(session, obj or LbInfo("chat", "10.0.0.5:9001"))
    if event == "LB_FAILED":
        return chain.lb_failed(session, obj or LbInfo("chat", None, 2, "no_member"))
    if event == "WS_FRAME":
        return chain.ws_frame(session, "client", 1, True, 5, b"hello")
    if event == "WS_MESSAGE":
        return chain.ws_message(session, "client", 1, b"hello")
    if event == "WS_CLOSE":
        return chain.ws_close(session, "server", 1001, "bye")
    return chain.client_closed(session)


# -- verdicts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("event, statement, expected", [
    ("WS_FRAME", 'return "drop"', Verdict("drop")),
    ("WS_MESSAGE", 'return "replace", "HELLO"', Verdict("replace", data=b"HELLO")),
    ("WS_FRAME", 'return "close", 1008, "policy"', Verdict("close", code=1008, reason="policy")),
    ("WS_FRAME", 'return "close"', Verdict("close", code=1000, reason="")),
    ("WS_OPEN", 'return "close", 4000', Verdict("close", code=4000, reason="")),
    ("HTTP_REQUEST", 'return "respond", 403, "no"', Verdict("respond", status=403, body=b"no")),
    ("HTTP_REQUEST", 'return "respond", 200, "ok", {["Content-Type"] = "text/plain"}',
     Verdict("respond", status=200, body=b"ok", headers=(("Content-Type", "text/plain"),))),
    ("HTTP_REQUEST", 'return "redirect", "https://example.com/"', Verdict("redirect", url="https://example.com/", status=302)),
    ("HTTP_REQUEST", 'return "redirect", "/new", 308', Verdict("redirect", url="/new", status=308)),
    ("HTTP_REQUEST", 'return "reject"', Verdict("reject")),
    ("CLIENT_ACCEPTED", 'return "reject"', Verdict("reject")),
    ("LB_SELECTED", 'return "reselect"', Verdict("reselect")),
    ("LB_FAILED", 'return "reselect", "fallback"', Verdict("reselect", pool="fallback")),
    ("LB_FAILED", 'return "respond", 503, "upstream unavailable"', Verdict("respond", status=503, body=b"upstream unavailable")),
])
def test_each_verdict_parses(tmp_path, event, statement, expected):
    _, chain = handler(tmp_path, event, statement)
    outcome = run(chain, event)
    assert outcome.verdict == expected
    assert outcome.plugin == "p"


@pytest.mark.parametrize("event, statement, message", [
    ("HTTP_REQUEST", 'return "drop"', "not allowed in HTTP_REQUEST"),
    ("WS_FRAME", 'return "respond", 200, "x"', "not allowed in WS_FRAME"),
    ("HTTP_RESPONSE", 'return "close", 1000', "may return nothing"),
    ("WS_FRAME", 'return "nonsense"', "unknown verdict"),
    ("WS_FRAME", 'return 42', "not a number"),
    ("WS_FRAME", 'return "close", 1005', "may not be sent"),
    ("WS_FRAME", 'return "close", 1000, string.rep("x", 124)', "longer than 123"),
    ("WS_FRAME", 'return "replace", {}', "not tables"),
    ("WS_MESSAGE", 'return "replace", "\\255\\254"', "valid UTF-8"),
    ("HTTP_REQUEST", 'return "respond", 99, "x"', "200-599"),
    ("HTTP_REQUEST", 'return "respond", 200, "x", {["Bad Name"] = "v"}', "invalid header name"),
    ("HTTP_REQUEST", 'return "redirect", "/x", 200', "301, 302"),
    ("HTTP_REQUEST", 'return "redirect", "/a\\r\\nSet-Cookie: x"', "without spaces or controls"),
])
def test_invalid_verdicts_are_plugin_errors(tmp_path, event, statement, message):
    plugin, chain = handler(tmp_path, event, statement)
    outcome = run(chain, event)
    if event in ("WS_CLOSE", "CLIENT_CLOSED"):
        assert outcome is None
    else:
        assert outcome.aborted and outcome.error.kind == "invalid"
        assert message in outcome.error.message
    assert plugin.stats.errors[(event, "invalid")] == 1


def test_pass_returns_none_and_counts_the_call(tmp_path):
    plugin, chain = handler(tmp_path, "WS_FRAME", "")
    assert run(chain, "WS_FRAME") is None
    assert plugin.stats.calls == 1


# -- objects ------------------------------------------------------------------------------------

def test_request_fields_and_methods(tmp_path):
    _, chain = handler(tmp_path, "HTTP_REQUEST", """
  local out = {
    req.method, req.path, req.query_string, req.host, tostring(req.upgrade),
    req:header("X-USER-ID"), tostring(req:header("missing")),
    req:cookie("sid"), req:cookie("plain"), tostring(req:cookie("nope")), req:cookie("spaced"),
    req:query("a"), req:query("b"), req:query("flag"), tostring(req:query("zzz")),
    ctx.id, ctx.client_addr, tostring(ctx.pool),
  }
  return "respond", 200, table.concat(out, "|")""")
    req = Request("POST", "/chat/room?a=1%202&b=x+y&flag&a=second", [
        ("Host", "Chat.Example.com:8443"), ("Upgrade", "WebSocket"), ("x-user-id", "u42"),
        ("Cookie", 'sid="abc"; plain=v1'), ("cookie", "spaced =  v 2  ")])
    outcome = run(chain, "HTTP_REQUEST", obj=req)
    assert outcome.verdict.body.decode().split("|") == [
        "POST", "/chat/room", "a=1%202&b=x+y&flag&a=second", "chat.example.com", "websocket",
        "u42", "nil", "abc", "v1", "nil", "v 2", "1 2", "x y", "", "nil", "7", "10.0.0.1:5555", "nil"]


def test_lua_and_python_read_requests_the_same_way():
    req = Request("GET", "/p?a=1%202&b=x+y&flag", [("Host", "A.b:1"), ("Cookie", 'sid="abc"; plain=v1'),
                                                  ("cookie", "spaced =  v 2  ")])
    assert (req.host, req.cookie("sid"), req.cookie("plain"), req.cookie("spaced"), req.cookie("nope")) == \
        ("a.b", "abc", "v1", "v 2", None)
    assert (req.query("a"), req.query("b"), req.query("flag"), req.query("zzz")) == ("1 2", "x y", "", None)


def test_header_edits_come_back_as_the_final_list(tmp_path):
    plugin = load_plugin(str(FIXTURES / "route.lua"))[0]
    chain = PluginChain([plugin])
    req = Request("GET", "/chat/1", [("Host", "h"), ("X-Debug", "1"), ("x-routed-by", "old"), ("X-Debug", "2"),
                                     ("X-User-Id", "u1")])
    outcome = run(chain, "HTTP_REQUEST", obj=req)
    assert outcome.actions.pool == "chat" and outcome.actions.hash_key == "u1"
    assert req.edited
    assert req.headers == [("Host", "h"), ("X-Routed-By", "route"), ("X-User-Id", "u1")]


def test_edits_are_visible_to_later_handlers_in_the_same_call(tmp_path):
    _, chain = handler(tmp_path, "HTTP_REQUEST", """
  req:set_header("X-A", "1")
  req:set_header("x-a", "2")
  req:del_header("X-Gone")
  return "respond", 200, tostring(req:header("X-A")) .. tostring(req:header("x-gone"))""")
    req = request(headers=[("X-Gone", "1"), ("Host", "h")])
    assert run(chain, "HTTP_REQUEST", obj=req).verdict.body == b"2nil"
    assert req.headers == [("Host", "h"), ("x-a", "2")]


@pytest.mark.parametrize("statement, message", [
    ('req:set_header("Content-Length", "5")', "belongs to the proxy"),
    ('req:set_header("X-Bad", "a\\r\\nb")', "without CR, LF or NUL"),
    ('req:set_header("bad name", "v")', "header name expected"),
    ('req.set_header("X", "v")', "with a colon"),
    ('req:del_header("Upgrade")', "belongs to the proxy"),
])
def test_bad_header_edits_fail_at_the_plugin_line(tmp_path, statement, message):
    plugin, chain = handler(tmp_path, "HTTP_REQUEST", f"  {statement}")
    req = request()
    outcome = run(chain, "HTTP_REQUEST", obj=req)
    assert outcome.aborted and message in outcome.error.message
    assert f"{plugin.chunk_name}:3:" in outcome.error.message
    assert not req.edited


def test_failed_handler_discards_its_edits_and_actions(tmp_path):
    _, chain = handler(tmp_path, "HTTP_REQUEST", """
  req:set_header("X-A", "1")
  ctx:use_pool("other")
  error("boom")""", on_error="continue")
    req = request()
    assert run(chain, "HTTP_REQUEST", obj=req) is None
    assert req.headers == [("Host", "Example.COM:8080")] and not req.edited


def test_response_view(tmp_path):
    _, chain = handler(tmp_path, "HTTP_RESPONSE", """
  res:set_header("X-Member", ctx.member or "none")
  if res.status == 101 and res:header("upgrade") == "websocket" then res:del_header("Server") end""")
    session = chain.session(1)
    session.pool, session.member = "chat", "10.0.0.5:9001"
    res = Response(101, [("Upgrade", "websocket"), ("Server", "x")], "Switching Protocols")
    assert run(chain, "HTTP_RESPONSE", session, res) is None
    assert res.headers == [("Upgrade", "websocket"), ("X-Member", "10.0.0.5:9001")]


def test_lb_fields(tmp_path):
    _, chain = handler(tmp_path, "LB_FAILED", """
  return "respond", 503, table.concat({lb.pool, tostring(lb.member), lb.attempt, lb.reason, lb.status, #lb.tried, lb.tried[2]}, ",")""")
    lb = LbInfo("chat", None, attempt=3, reason="status", tried=("a:1", "b:2"), status=502)
    assert run(chain, "LB_FAILED", obj=lb).verdict.body == b"chat,nil,3,status,502,2,b:2"


def test_frame_and_close_fields(tmp_path, caplog):
    plugin = lua(tmp_path, """
local P = {}
function P.WS_FRAME(ctx, f)
  log.info(f.dir, " ", f.opcode, " ", tostring(f.fin), " ", f.len, " ", f.payload, " ", type(f.ts))
end
function P.WS_CLOSE(ctx, c)
  log.info(c.dir, " ", c.code, " ", c.reason)
end
return P
""")
    chain = PluginChain([plugin])
    session = chain.session(1)
    caplog.set_level(logging.INFO, logger="wsproxy.plugin")
    chain.ws_frame(session, "server", 2, False, 100, b"first", ts=12.5)
    chain.ws_frame(session, "client", 0, True, 3, b"end")
    chain.ws_close(session, "client", 1000, "done")
    assert [r.getMessage() for r in caplog.records] == [
        "server binary false 100 first number", "client cont true 3 end number", "client 1000 done"]


def test_frame_tables_take_no_new_fields(tmp_path):
    _, chain = handler(tmp_path, "WS_FRAME", "  f.seen = true")
    outcome = run(chain, "WS_FRAME")
    assert outcome.aborted and "take no new fields" in outcome.error.message


def test_ctx_actions(tmp_path):
    _, chain = handler(tmp_path, "WS_MESSAGE", """
  ctx:send("client", "notice")
  ctx:send("server", "\\0\\1", "binary")
  ctx:close(4001, "later")
  ctx:disable("WS_MESSAGE")""")
    session = chain.session(1)
    outcome = chain.ws_message(session, "client", 1, b"x")
    actions = outcome.actions
    assert actions.sends == [("client", b"notice", "text"), ("server", b"\x00\x01", "binary")]
    assert actions.close == (4001, "later")
    assert actions.disabled == [("p", "WS_MESSAGE")]
    assert not session.hooks("WS_MESSAGE", "client")
    assert chain.ws_message(session, "client", 1, b"x") is None


def test_routing_actions_and_ctx_pool(tmp_path):
    _, chain = handler(tmp_path, "HTTP_REQUEST", """
  ctx:use_pool("chat")
  ctx:use_member("10.0.0.9:9001", {strict = true})
  ctx:hash_key(12345)
  return "respond", 200, ctx.pool .. " " .. ctx.member""")
    outcome = run(chain, "HTTP_REQUEST")
    assert outcome.verdict.body == b"chat 10.0.0.9:9001"
    actions = outcome.actions
    assert (actions.pool, actions.member, actions.strict, actions.hash_key) == ("chat", "10.0.0.9:9001", True, "12345")


@pytest.mark.parametrize("event, statement", [
    ("WS_FRAME", 'ctx:use_pool("x")'),
    ("HTTP_REQUEST", 'ctx:close(1000)'),
    ("LB_SELECTED", 'ctx:send("client", "x")'),
    ("HTTP_REQUEST", 'ctx:send("nobody", "x")'),
])
def test_ctx_methods_outside_their_events_fail(tmp_path, event, statement):
    _, chain = handler(tmp_path, event, f"  {statement}")
    outcome = run(chain, event)
    assert outcome.aborted
    assert "not available in" in outcome.error.message or "expected" in outcome.error.message


def test_vars_are_per_connection_and_freed_at_client_closed(tmp_path):
    plugin = lua(tmp_path, """
local P = {}
function P.WS_MESSAGE(ctx, m)
  ctx.vars.n = (ctx.vars.n or 0) + 1
  return "replace", tostring(ctx.vars.n)
end
function P.CLIENT_CLOSED(ctx) end
return P
""")
    chain = PluginChain([plugin])
    a, b = chain.session(1), chain.session(2)
    assert chain.ws_message(a, "client", 1, b"x").verdict.data == b"1"
    assert chain.ws_message(a, "client", 1, b"x").verdict.data == b"2"
    assert chain.ws_message(b, "client", 1, b"x").verdict.data == b"1"
    chain.client_closed(a)
    again = chain.session(1)  # the same id, reused: a fresh ctx
    assert chain.ws_message(again, "client", 1, b"x").verdict.data == b"1"


def test_options_and_payload_false_filter():
    plugin = load_plugin(str(FIXTURES / "options.lua"), options={"header": "X-Limit", "limits": [1, 2]})[0]
    chain = PluginChain([plugin])
    session = chain.session(1)
    req = request()
    asyncio.run(chain.http_request(session, req))
    assert req.header("x-limit") == "2"
    assert chain.ws_frame(session, "client", 1, True, 1, b"a") is None
    assert chain.ws_frame(session, "server", 1, True, 1, b"a") is None  # dir filter: not called
    assert chain.ws_frame(session, "client", 1, True, 1, b"a") is None
    outcome = chain.ws_frame(session, "client", 1, True, 1, b"a")
    assert outcome.verdict == Verdict("close", code=1008, reason="too many frames")
    assert chain.payload_limit("WS_FRAME", "client") == 0


def test_options_that_lua_cannot_hold_are_a_load_error(tmp_path):
    with pytest.raises(PluginLoadError, match="cannot be handed to Lua"):
        lua(tmp_path, "return {}", options={"when": object()})


def test_shared_from_lua_and_python_see_the_same_store(tmp_path):
    now = [100.0]
    store = SharedStore(clock=lambda: now[0])
    _, chain = handler(tmp_path, "HTTP_REQUEST", """
  local n = shared.incr("hits:" .. req.path, 1, 10)
  shared.set("last", req.path, 5)
  local added = shared.add("first", req.path)
  shared.touch("hits:" .. req.path, 20)
  return "respond", 200, n .. "," .. tostring(added) .. "," .. tostring(shared.get("nothing")) .. "," .. shared.get("py")""",
        shared=store)
    store.set("py", "from python")
    assert run(chain, "HTTP_REQUEST").verdict.body == b"1,true,nil,from python"
    assert run(chain, "HTTP_REQUEST").verdict.body == b"2,false,nil,from python"
    assert store.get("last") == "/" and store.get("first") == "/"
    now[0] += 6
    assert store.get("last") is None and store.get("hits:/") == 2
    now[0] += 15
    assert store.get("hits:/") is None


@pytest.mark.parametrize("statement, message", [
    ('shared.set("k", {})', "string, number or boolean expected"),
    ('shared.set("", 1)', "non-empty string key"),
    ('shared.set("k", 1, -1)', "ttl"),
    ('shared.set("s", "x"); shared.incr("s")', "not a number"),
    ('for i = 1, 2000 do shared.get("k") end', "too many shared"),
    ('local s = ("abc"):gsub("b", function() return shared.get("k") or "" end)', "yield across"),
])
def test_shared_misuse_is_a_plugin_error(tmp_path, statement, message):
    _, chain = handler(tmp_path, "HTTP_REQUEST", f"  {statement}")
    outcome = run(chain, "HTTP_REQUEST")
    assert outcome.aborted and message in outcome.error.message


def test_log_and_metric(tmp_path, caplog):
    plugin, chain = handler(tmp_path, "WS_FRAME", """
  log.warn("frame of ", f.len, " bytes ", nil, true)
  print("a", 1)
  metric.incr("frames")
  metric.incr("bytes", f.len)""")
    caplog.set_level(logging.INFO, logger="wsproxy.plugin")
    run(chain, "WS_FRAME")
    run(chain, "WS_FRAME")
    assert [r.getMessage() for r in caplog.records] == ["frame of 5 bytes niltrue", "a\t1"] * 2
    assert caplog.records[0].levelname == "WARNING" and caplog.records[0].name == "wsproxy.plugin.p"
    assert caplog.records[0].fields == {"plugin": "p"}
    assert dict(plugin.stats.metrics) == {"frames": 2, "bytes": 10}


def test_log_lines_before_an_error_are_kept(tmp_path, caplog):
    _, chain = handler(tmp_path, "WS_FRAME", '  log.info("before")\n  error("after")')
    caplog.set_level(logging.INFO, logger="wsproxy.plugin")
    assert run(chain, "WS_FRAME").aborted
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "before" and "after" in messages[1]


def test_many_records_in_one_call(tmp_path, caplog):
    # lupa moves values yielded by a coroutine without growing the stack, so records travel
    # through a plain call; hundreds of them must work (this once aborted the process)
    _, chain = handler(tmp_path, "WS_MESSAGE", '  for i = 1, 400 do log.info(i); ctx:send("client", "m" .. i) end')
    caplog.set_level(logging.INFO, logger="wsproxy.plugin")
    outcome = run(chain, "WS_MESSAGE")
    assert len(outcome.actions.sends) == 400 and outcome.actions.sends[-1] == ("client", b"m400", "text")
    assert len(caplog.records) == 400


def test_too_many_records_per_call(tmp_path):
    _, chain = handler(tmp_path, "WS_FRAME", '  for i = 1, 5000 do log.info(i) end')
    assert "too many ctx actions and log lines" in run(chain, "WS_FRAME").error.message


# -- load -----------------------------------------------------------------------------------------

def test_metadata(tmp_path):
    plugin = lua(tmp_path, """
local P = { name = "meta", priority = 42, on_error = "continue",
            filters = { WS_FRAME = { dir = "server", opcodes = {"text", "binary"}, payload = 16, fin_only = true, min_len = 2 },
                        WS_MESSAGE = { max_size = 1024 } } }
function P.WS_FRAME(ctx, f) end
function P.WS_MESSAGE(ctx, m) end
function P.helper() end
return P
""", listeners=("public",))
    assert (plugin.name, plugin.priority, plugin.on_error, plugin.listeners) == ("meta", 42, "continue", ("public",))
    frame, message = plugin.subscriptions
    assert (frame.event, frame.dir, frame.opcodes, frame.payload, frame.fin_only, frame.min_len) == \
        ("WS_FRAME", "server", frozenset({1, 2}), 16, True, 2)
    assert (message.event, message.max_size) == ("WS_MESSAGE", 1024)


def test_config_on_error_wins_over_the_plugin(tmp_path):
    plugin = lua(tmp_path, 'return { on_error = "continue", WS_FRAME = function() end }', on_error="disable")
    assert plugin.on_error == "disable"
    assert lua(tmp_path, "return { WS_FRAME = function() end }", name="q").on_error == "abort"


@pytest.mark.parametrize("name, line, message", [
    ("syntax_error.lua", 10, "'end' expected (to close 'function' at line 3) near <eof>"),
    ("runtime_error.lua", 3, "attempt to index a nil value (local 'x')"),
])
def test_load_errors_carry_file_and_line(name, line, message):
    path = str(FIXTURES / name)
    with pytest.raises(PluginLoadError) as info:
        load_plugin(path)
    assert (info.value.path, info.value.line, info.value.message) == (path, line, message)
    assert str(info.value) == f"{path}:{line}: {message}"


@pytest.mark.parametrize("source, message", [
    ("return 42", "must end with 'return P'"),
    ("return { helper = function() end }", "no event functions"),
    ("return { WS_FRAMES = function() end }", "P.WS_FRAMES is not an event"),
    ("return { HTTP_REQUEST = function() end, filters = { WS_FRAME = { dir = 'client' } } }", "no P.WS_FRAME function"),
    ("return { WS_FRAME = function() end, filters = { WS_FRAME = { colour = 'red' } } }", "unknown filter 'colour'"),
    ("return { WS_FRAME = function() end, filters = { WS_FRAME = { dir = 'up' } } }", 'dir must be "client" or "server"'),
    ("return { WS_FRAME = function() end, filters = { WS_FRAME = { opcodes = {'txt'} } } }", "unknown opcode"),
    ("return { HTTP_REQUEST = function() end, filters = { HTTP_REQUEST = { dir = 'client' } } }", "does not apply to HTTP_REQUEST"),
    ("return { WS_FRAME = function() end, filters = { WS_FRAME = { opcodes = {{}} } } }", "values are strings"),
    ("return { priority = 2000, WS_FRAME = function() end }", "P.priority must be an integer 0..1000"),
    ("return { name = {}, WS_FRAME = function() end }", "takes strings and numbers"),
    ("return { on_error = 'explode', WS_FRAME = function() end }", "on_error must be"),
])
def test_bad_plugin_tables_are_load_errors(tmp_path, source, message):
    with pytest.raises(PluginLoadError) as info:
        lua(tmp_path, source)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PluginLoadError, match="cannot read the plugin file"):
        LuaPlugin(str(tmp_path / "nope.lua"))


def test_shared_is_usable_while_loading(tmp_path):
    store = SharedStore()
    lua(tmp_path, 'shared.set("loaded", true)\nreturn { WS_FRAME = function() end }', shared=store)
    assert store.get("loaded") is True


def test_restart_gives_a_fresh_runtime_with_the_same_source(tmp_path):
    plugin, chain = handler(tmp_path, "WS_MESSAGE", '  ctx.vars.n = (ctx.vars.n or 0) + 1\n  return "replace", tostring(ctx.vars.n)')
    (tmp_path / "p.lua").write_text("return {}")  # the file changing on disk must not matter
    session = chain.session(1)
    assert chain.ws_message(session, "client", 1, b"x").verdict.data == b"1"
    old = plugin._runtime
    plugin.restart()
    assert plugin._runtime is not old
    assert chain.ws_message(session, "client", 1, b"x").verdict.data == b"1"


def test_memory_report(tmp_path):
    plugin = lua(tmp_path, "return { WS_FRAME = function() end }", limits=Limits(memory=1 << 20))
    assert 0 < plugin.memory_kib() < 1024
