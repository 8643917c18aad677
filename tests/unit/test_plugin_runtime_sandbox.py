"""The Lua sandbox: escapes fail, runaway code is stopped, and the runtime keeps serving.

Each escape attempt runs inside a real plugin handler (HTTP_REQUEST) and must end as a
plugin error (on_error = abort -> Outcome.aborted) or a harmless nil, never as access.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from wsproxy.scripting.chain import PluginChain
from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import Limits
from wsproxy.scripting.lua import LuaPlugin
from wsproxy.scripting.objects import Request

HAS_LUAJIT = importlib.util.find_spec("lupa.luajit21") is not None


def lua(tmp_path, body: str, name: str = "p", **kwargs) -> LuaPlugin:
    path = tmp_path / f"{name}.lua"
    path.write_text(body)
    return LuaPlugin(str(path), **kwargs)


def probe(tmp_path, expression: str, **kwargs) -> tuple:
    """Evaluate ``expression`` inside a handler; returns (ok, value as text) via a respond verdict."""
    plugin = lua(tmp_path, f"""
local P = {{}}
function P.HTTP_REQUEST(ctx, req)
  local ok, value = pcall(function() return {expression} end)
  return "respond", 200, tostring(ok) .. "|" .. tostring(value)
end
return P
""", **kwargs)
    chain = PluginChain([plugin])
    outcome = asyncio.run(chain.http_request(chain.session(1), Request("GET", "/", [])))
    assert outcome is not None and outcome.verdict.kind == "respond", outcome
    ok, _, value = outcome.verdict.body.decode().partition("|")
    return ok == "true", value


def run_request(plugin: LuaPlugin):
    chain = PluginChain([plugin])
    return asyncio.run(chain.http_request(chain.session(1), Request("GET", "/", [])))


@pytest.mark.parametrize("expression", [
    "os.execute('echo pwned')",
    "io.open('/etc/passwd')",
    "require('os')",
    "load('return 1')",
    "loadstring('return 1')",
    "dofile('/etc/passwd')",
    "loadfile('/etc/passwd')",
    "debug.getinfo(1)",
    "string.dump(print)",
    "python.eval('1+1')",
    "python.builtins.open",
    "package.loaded.os",
    "coroutine.create(print)",
    "collectgarbage('stop')",
    "collectgarbage('collect')",
    "setfenv(1, {})",
    "newproxy(true)",
])
def test_dangerous_globals_are_absent(tmp_path, expression):
    ok, value = probe(tmp_path, expression)
    assert not ok, f"{expression} succeeded: {value}"


@pytest.mark.parametrize("name", ["os.execute", "io", "require", "load", "loadstring", "dofile", "loadfile",
                                  "debug", "python", "package", "string.dump", "coroutine", "jit", "ffi"])
def test_names_resolve_to_nil(tmp_path, name):
    ok, value = probe(tmp_path, name)
    # os itself exists (time/clock subset) so os.execute is nil; everything else is nil outright
    assert ok and value == "nil", (name, value)


def test_safe_os_subset(tmp_path):
    ok, value = probe(tmp_path, "type(os.time()) .. ',' .. type(os.clock()) .. ',' .. tostring(os.getenv)")
    assert ok and value == "number,number,nil"


def test_collectgarbage_count_only(tmp_path):
    ok, value = probe(tmp_path, "collectgarbage('count') > 0")
    assert ok and value == "true"


def test_string_metatable_is_locked(tmp_path):
    ok, value = probe(tmp_path, "getmetatable('')")
    assert ok and value == "false"
    ok, value = probe(tmp_path, "getmetatable('').__index")  # indexing false fails
    assert not ok
    ok, value = probe(tmp_path, "('x').dump")  # the real string table lost dump too
    assert ok and value == "nil"
    ok, value = probe(tmp_path, "setmetatable('', {})")
    assert not ok


def test_env_modification_does_not_reach_real_globals(tmp_path):
    # _G is the plugin's own env; rawget on it finds none of the removed names
    ok, value = probe(tmp_path, "rawget(_G, 'os') and rawget(_G.os, 'execute')")
    assert ok and value == "nil"
    ok, value = probe(tmp_path, "getmetatable(_G)")
    assert ok and value == "nil"


def test_no_python_objects_reachable_from_ctx_and_req(tmp_path):
    plugin = lua(tmp_path, """
local P = {}
local function scan(t, seen)
  for k, v in pairs(t) do
    if type(v) == "userdata" then error("userdata found at " .. tostring(k)) end
    if type(v) == "table" and not seen[v] then seen[v] = true; scan(v, seen) end
  end
end
function P.HTTP_REQUEST(ctx, req)
  scan(ctx, {}); scan(req, {}); scan(_G, {})
  assert(getmetatable(ctx) == false and getmetatable(req) == false)
  return "respond", 200, "clean"
end
return P
""")
    outcome = run_request(plugin)
    assert outcome.verdict.kind == "respond" and outcome.verdict.body == b"clean"


def test_attribute_filter_denies_everything():
    from wsproxy.scripting.lua import _deny_attribute
    with pytest.raises(AttributeError):
        _deny_attribute(object(), "__class__", False)


def _real_bytecode() -> bytes:
    import lupa.lua54
    return lupa.lua54.LuaRuntime(encoding=None).eval(b"string.dump(function() return {} end)")


@pytest.mark.parametrize("content", [
    pytest.param(b"\x1bLuaT\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00\x00", id="crafted-header"),
    pytest.param(None, id="string.dump-output"),
])
def test_bytecode_is_refused_at_load(tmp_path, content):
    path = tmp_path / "bin.lua"
    path.write_bytes(content if content is not None else _real_bytecode())
    with pytest.raises(PluginLoadError, match="precompiled|binary"):
        LuaPlugin(str(path))


def test_binary_chunk_bytes_from_lua_are_never_loaded(tmp_path):
    # Even with a binary string in hand there is no loader to hand it to.
    ok, value = probe(tmp_path, "load or loadstring or dofile")
    assert ok and value == "nil"


def test_gc_metamethods_are_refused(tmp_path):
    ok, value = probe(tmp_path, "setmetatable({}, {__gc = function() while true do end end})")
    assert not ok and "__gc" in value


def test_empty_string_rep_does_not_hang(tmp_path):
    started = time.monotonic()
    ok, value = probe(tmp_path, "#string.rep('', 1e15) .. #(''):rep(2^53)")
    assert ok and value == "00"
    assert time.monotonic() - started < 2


def test_huge_table_move_is_refused(tmp_path):
    ok, value = probe(tmp_path, "table.move({}, 1, 1e15, 1)")
    assert not ok and "too large" in value


# -- budgets and memory ---------------------------------------------------------------------

RUNAWAY = """
local P = {}
function P.HTTP_REQUEST(ctx, req)
  if req.path == "/loop" then
    while true do end
  elseif req.path == "/catch" then
    -- trying to swallow the budget error with pcall must not work
    while true do pcall(function() while true do end end) end
  elseif req.path == "/xpcall" then
    while true do xpcall(function() while true do end end, function(e) return e end) end
  elseif req.path == "/bomb" then
    local s = "x"
    while true do s = s .. s end
  elseif req.path == "/table" then
    local t = {}
    local i = 0
    while true do i = i + 1; t[i] = ("x"):rep(4096) .. i end
  elseif req.path == "/catchmem" then
    local n = 0
    while true do
      pcall(function() local s = "y"; while true do s = s .. s end end)
      n = n + 1
    end
  end
  return "respond", 200, "still here"
end
return P
"""


@pytest.fixture
def runaway(tmp_path):
    plugin = lua(tmp_path, RUNAWAY, limits=Limits(memory=4 * 1024 * 1024, instructions=200_000))
    return plugin, PluginChain([plugin])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("path, kind", [
    ("/loop", "budget"), ("/catch", "budget"), ("/xpcall", "budget"),
    ("/bomb", "memory"), ("/table", "memory"), ("/catchmem", "budget"),
])
def test_runaway_code_is_stopped_and_the_same_runtime_keeps_serving(runaway, path, kind):
    plugin, chain = runaway
    runtime = plugin._runtime
    started = time.monotonic()
    outcome = asyncio.run(chain.http_request(chain.session(1), Request("GET", path, [])))
    assert time.monotonic() - started < 5
    assert outcome.aborted and outcome.error.kind == kind, outcome.error
    assert plugin.stats.errors[("HTTP_REQUEST", kind)] == 1
    # the same runtime (no restart) answers the next call
    outcome = asyncio.run(chain.http_request(chain.session(2), Request("GET", "/", [])))
    assert outcome.verdict.kind == "respond" and outcome.verdict.body == b"still here"
    assert plugin._runtime is runtime


def test_budget_error_points_at_the_plugin_line(tmp_path):
    plugin = lua(tmp_path, "local P = {}\nfunction P.HTTP_REQUEST(ctx, req)\n  local n = 0\n  while true do n = n + 1 end\nend\nreturn P\n",
                 limits=Limits(instructions=10_000))
    outcome = run_request(plugin)
    assert outcome.error.kind == "budget"
    assert f"{plugin.chunk_name}:4: instruction budget exceeded" in outcome.error.message


def test_budget_applies_while_the_file_loads(tmp_path):
    path = tmp_path / "top.lua"
    path.write_text("local P = {}\nwhile true do end\nreturn P\n")
    with pytest.raises(PluginLoadError, match="instruction budget exceeded") as info:
        LuaPlugin(str(path), limits=Limits(instructions=10_000))
    assert info.value.line == 2


def test_a_normal_handler_fits_the_default_budget(tmp_path):
    plugin = lua(tmp_path, """
local P = {}
function P.HTTP_REQUEST(ctx, req)
  local t = {}
  for i = 1, 20000 do t[#t + 1] = tostring(i) end
  return "respond", 200, tostring(#table.concat(t))
end
return P
""")
    assert run_request(plugin).verdict.body == b"88894"


def test_memory_cap_is_per_runtime(tmp_path):
    small = lua(tmp_path, "local P = {}\nfunction P.HTTP_REQUEST(ctx, req) local s = string.rep('x', 3000000); return 'respond', 200, tostring(#s) end\nreturn P\n",
                name="small", limits=Limits(memory=2 * 1024 * 1024))
    big = lua(tmp_path, "local P = {}\nfunction P.HTTP_REQUEST(ctx, req) local s = string.rep('x', 3000000); return 'respond', 200, tostring(#s) end\nreturn P\n",
              name="big", limits=Limits(memory=16 * 1024 * 1024))
    assert run_request(small).error.kind == "memory"
    assert run_request(big).verdict.body == b"3000000"


@pytest.mark.skipif(not HAS_LUAJIT, reason="lupa.luajit21 not in this lupa build")
def test_luajit_runtime_loads_and_warns(tmp_path, caplog):
    plugin = lua(tmp_path, "local P = {}\nfunction P.HTTP_REQUEST(ctx, req) return 'respond', 200, jit and 'jit' or _VERSION end\nreturn P\n",
                 runtime="luajit")
    assert "no instruction budget" in caplog.text
    assert plugin.runtime == "luajit"
    outcome = run_request(plugin)
    assert outcome.verdict.body == b"Lua 5.1"  # the jit module itself stays out of the sandbox
    ok, value = probe(tmp_path, "os.execute or io or require or load or string.dump", runtime="luajit")
    assert ok and value == "nil"


def test_missing_runtime_module_is_a_clear_load_error(tmp_path, monkeypatch):
    from wsproxy.scripting import lua as lua_module
    monkeypatch.setitem(lua_module.RUNTIMES, "luajit", ("lupa.luajit_not_there",))
    path = tmp_path / "j.lua"
    path.write_text("return {}")
    with pytest.raises(PluginLoadError, match='runtime "luajit" needs lupa.luajit_not_there'):
        LuaPlugin(str(path), runtime="luajit")


def test_unknown_runtime(tmp_path):
    path = tmp_path / "j.lua"
    path.write_text("return {}")
    with pytest.raises(PluginLoadError, match="unknown runtime"):
        LuaPlugin(str(path), runtime="lua99")
