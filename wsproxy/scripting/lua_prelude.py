"""The trusted Lua code of every plugin runtime: sandbox, budget, event tables, ctx methods.

It runs once per runtime, in the runtime's real globals, *before* any plugin code, then
deletes the dangerous globals (plugin-api.md §3.3). Design points, each for a reason:

- **Whitelisted env.** A plugin chunk is compiled with ``load(src, "@path", "t", env)``:
  text only (a precompiled ``\\27Lua`` chunk is refused twice: a first-byte check and mode
  "t"), and its globals are ``env``, a fresh table holding copies of the safe libraries.
  ``string.dump`` is removed from the *real* string table too, and the string metatable is
  locked (``__metatable = false``), because ``("").dump`` and ``getmetatable("").__index``
  reach that table, not the copy.
- **No Python objects in Lua** (lupa CVE-2026-34444): Python passes only bytes, numbers,
  booleans and nil, and gets only such scalars back. ``log``/``metric`` and ``ctx``/``req``
  methods append 4-slot records (tag, a, b, c) to a private list; the job's answer says how
  many, and Python fetches them with the plain call ``records()``. ``shared.*`` needs an
  answer, so it *yields* ``"host", op, key, ...`` out of the worker coroutine and Python
  resumes it with ``ok, value``.
- **One worker coroutine** runs every job (plugin load and events), so a host call can
  suspend it, and Python resumes it directly with ``_LuaThread.send`` (measured ~50 ns more
  than a plain call, versus ~250 ns for a ``coroutine.resume`` through a Lua function).
  At most 6 values ever cross a yield: lupa 2.8 moves yielded values onto the main Lua
  stack without growing it (``lua_xmove`` in ``resume_lua_thread``), and a few dozen
  aborted the process in a test.
- **Instruction budget.** A count hook on the worker fires every ``tick`` instructions; past
  ``budget_ticks`` it raises "instruction budget exceeded" at the plugin's line. The flag
  stays set, and the sandbox's ``pcall``/``xpcall`` re-raise it, so a plugin cannot catch
  its way out of the budget. Not installed on LuaJIT, whose compiled code never calls hooks.
- **Library holes a hook cannot see** (C code runs without instruction counting):
  ``string.rep("", 1e15)`` loops without allocating, so empty strings short-cut; huge
  ``table.move``/``table.sort`` ranges are refused; ``__gc`` metamethods are refused by
  ``setmetatable`` (a finalizer runs wherever the GC happens to run). Pattern matching on
  long subjects can still be slow (``("a"):rep(60000):find(".-.-b")``): documented, not
  preventable from Lua.
- **Reused frame/message tables.** ``f``/``m`` are refilled per call (no allocation on the
  hot path) and refuse new fields, so state cannot leak from one frame to the next by
  accident; ``ctx.vars`` is the place for state.
"""

from __future__ import annotations

__all__ = ["PRELUDE"]

PRELUDE = rb'''
local budget_ticks, tick, max_records, max_host_calls, protected_spec, actions_spec = ...

local type, tostring, tonumber, select, next, error, pcall, xpcall = type, tostring, tonumber, select, next, error, pcall, xpcall
local rawget, rawset, rawequal, rawlen = rawget, rawset, rawequal, rawlen
local setmetatable, getmetatable, ipairs, pairs, assert = setmetatable, getmetatable, ipairs, pairs, assert
local string, table, math, utf8, bit = string, table, math, rawget(_G, "utf8"), rawget(_G, "bit")
local s_byte, s_char, s_find, s_format, s_gsub = string.byte, string.char, string.find, string.format, string.gsub
local s_lower, s_match, s_sub, s_gmatch = string.lower, string.match, string.sub, string.gmatch
local t_concat, t_move, t_sort = table.concat, table.move, table.sort
local unpack = table.unpack or unpack
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local sethook = debug.sethook
local load = load
local os_time, os_clock = os.time, os.clock
local collectgarbage = collectgarbage

-- Harden the real string table: methods on strings (("x"):rep) reach it, not env.string.
string.dump = nil
do
  local rep = string.rep
  string.rep = function(s, n, sep)
    if s == "" and (sep == nil or sep == "") then return "" end  -- C loop without allocation
    return rep(s, n, sep)
  end
end
getmetatable("").__metatable = false

-- Instruction budget -------------------------------------------------------------------
local ticks, exhausted, armed = 0, false, false
local BUDGET_MSG = "instruction budget exceeded (" .. budget_ticks * tick .. " instructions per call)"
local function count_hook()
  ticks = ticks + 1
  if armed and ticks > budget_ticks then
    exhausted = true
    error(BUDGET_MSG, 2)  -- level 2: the plugin function that was running
  end
end

local function rethrow_budget(...)
  if exhausted then error(BUDGET_MSG, 0) end
  return ...
end
local function safe_pcall(f, ...) return rethrow_budget(pcall(f, ...)) end
local function safe_xpcall(f, handler, ...) return rethrow_budget(xpcall(f, handler, ...)) end

local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in plugins", 2)
  end
  return setmetatable(t, mt)
end

local function safe_collectgarbage(opt)
  if opt == "count" then return collectgarbage("count") end
  error("collectgarbage: only collectgarbage(\"count\") is available to plugins", 2)
end

local MAX_RANGE = 4194304  -- 2^22 elements: more than fits the memory cap anyway
local safe_move = t_move and function(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f >= MAX_RANGE then
    error("table.move: range too large", 2)
  end
  return t_move(a1, f, e, t, a2)
end
local function safe_sort(t, comp)
  if type(t) == "table" and #t > MAX_RANGE then error("table.sort: table too large", 2) end
  return t_sort(t, comp)
end

-- Records: what a call hands back to Python (actions, header edits, log lines, metrics) --
local records, nrec, host_calls = {}, 0, 0
local record_cap = max_records * 4
local function record(tag, a, b, c)
  local n = nrec
  if n >= record_cap then
    error("too many ctx actions and log lines in one call (at most " .. max_records .. ")", 3)
  end
  records[n + 1], records[n + 2], records[n + 3], records[n + 4] = tag, a, b, c
  nrec = n + 4
end

local LOG_MAX = 4096
local function join(sep, ...)
  local parts, n = {...}, select("#", ...)
  for i = 1, n do
    local v = parts[i]
    if type(v) ~= "string" then parts[i] = tostring(v) end
  end
  local s = t_concat(parts, sep, 1, n)
  if #s > LOG_MAX then s = s_sub(s, 1, LOG_MAX) .. "..." end
  return s
end

local log = {}
for _, level in ipairs({"debug", "info", "warn", "error"}) do
  log[level] = function(...) record("log", level, join("", ...)) end
end
local function safe_print(...) record("log", "info", join("\t", ...)) end

local function want_string(v, fname, i)
  if type(v) ~= "string" then
    error(s_format("bad argument #%d to '%s' (string expected, got %s)", i, fname, type(v)), 3)
  end
end
local function want_number(v, fname, i)
  if type(v) ~= "number" then
    error(s_format("bad argument #%d to '%s' (number expected, got %s)", i, fname, type(v)), 3)
  end
end

local metric = {
  incr = function(name, n)
    want_string(name, "metric.incr", 1)
    if n == nil then n = 1 end
    want_number(n, "metric.incr", 2)
    record("metric", name, n)
  end,
}

-- shared: answered by Python while the worker is suspended ------------------------------
local function host(op, key, a, b)
  host_calls = host_calls + 1
  if host_calls > max_host_calls then
    error("too many shared.* calls in one call (at most " .. max_host_calls .. ")", 3)
  end
  local ok, v = co_yield("host", op, key, a, b)
  if not ok then error(v, 3) end
  return v
end
local function want_key(k, fname)
  if type(k) ~= "string" or k == "" then
    error(s_format("bad argument #1 to '%s' (non-empty string key expected, got %s)", fname, type(k)), 3)
  end
end
local function want_value(v, fname)
  local t = type(v)
  if t ~= "string" and t ~= "number" and t ~= "boolean" then
    error(s_format("bad argument #2 to '%s' (string, number or boolean expected, got %s)", fname, t), 3)
  end
end
local function want_ttl(ttl, fname, i)
  if ttl ~= nil and (type(ttl) ~= "number" or ttl < 0 or ttl ~= ttl) then
    error(s_format("bad argument #%d to '%s' (ttl in seconds >= 0 expected)", i, fname), 3)
  end
end
local shared = {
  get = function(k) want_key(k, "shared.get"); return host("get", k) end,
  set = function(k, v, ttl)
    want_key(k, "shared.set"); want_value(v, "shared.set"); want_ttl(ttl, "shared.set", 3)
    return host("set", k, v, ttl)
  end,
  add = function(k, v, ttl)
    want_key(k, "shared.add"); want_value(v, "shared.add"); want_ttl(ttl, "shared.add", 3)
    return host("add", k, v, ttl)
  end,
  incr = function(k, delta, ttl)
    want_key(k, "shared.incr")
    if delta == nil then delta = 1 end
    want_number(delta, "shared.incr", 2); want_ttl(ttl, "shared.incr", 3)
    return host("incr", k, delta, ttl)
  end,
  touch = function(k, ttl) want_key(k, "shared.touch"); want_ttl(ttl, "shared.touch", 2); return host("touch", k, ttl) end,
  delete = function(k) want_key(k, "shared.delete"); return host("delete", k) end,
}

-- ctx ---------------------------------------------------------------------------------
local allowed = {}
for ev, list in s_gmatch(actions_spec, "([%u_]+)=([%l_,]*)") do
  local set = {}
  for a in s_gmatch(list, "[%l_]+") do set[a] = true end
  allowed[ev] = set
end
local current_event = ""
local function may(self, action)
  if type(self) ~= "table" then error("call it as ctx:" .. action .. "(...), with a colon", 3) end
  local set = allowed[current_event]
  if not (set and set[action]) then
    error(s_format("ctx:%s() is not available in %s", action, current_event), 3)
  end
end

local CTX = {}
CTX.__index = CTX
CTX.__metatable = false
function CTX.use_pool(self, name)
  may(self, "use_pool"); want_string(name, "use_pool", 1)
  self.pool = name
  record("use_pool", name)
end
function CTX.use_member(self, addr, opts)
  may(self, "use_member"); want_string(addr, "use_member", 1)
  local strict = false
  if opts ~= nil then
    if type(opts) ~= "table" then error("bad argument #2 to 'use_member' (table like {strict = true} expected)", 2) end
    strict = rawget(opts, "strict") and true or false
  end
  self.member = addr
  record("use_member", addr, strict)
end
function CTX.hash_key(self, key)
  may(self, "hash_key")
  if type(key) == "number" then key = tostring(key) end
  want_string(key, "hash_key", 1)
  record("hash_key", key)
end
function CTX.close(self, code, reason)
  may(self, "close"); want_number(code, "close", 1)
  if reason ~= nil then want_string(reason, "close", 2) end
  record("close", code, reason or "")
end
function CTX.send(self, to, data, opcode)
  may(self, "send")
  if to ~= "client" and to ~= "server" then error("bad argument #1 to 'send' (\"client\" or \"server\" expected)", 2) end
  want_string(data, "send", 2)
  if opcode ~= nil then want_string(opcode, "send", 3) end
  record("send", to, data, opcode or "text")
end
function CTX.disable(self, event)
  may(self, "disable"); want_string(event, "disable", 1)
  record("disable", event)
end

local conns = {}
local function get_ctx(conn)
  local ctx = conns[conn]
  if ctx == nil then
    ctx = setmetatable({id = conn, vars = {}}, CTX)
    conns[conn] = ctx
  end
  return ctx
end
local function conn_ctx(conn, addr, pool, member)
  local ctx = get_ctx(conn)
  ctx.client_addr, ctx.pool, ctx.member = addr, pool, member
  return ctx
end

-- req / res: tables with methods over a private flat header list {name, value, ...} ---
local HEADS = setmetatable({}, {__mode = "k"})
local QUERY = setmetatable({}, {__mode = "k"})
local PROTECTED = {}
for name in s_gmatch(protected_spec, "%S+") do PROTECTED[name] = true end
local TOKEN = "^[!#$%%&'*+%-.^_`|~0-9A-Za-z]+$"

local function heads(self, fname)
  local h = HEADS[self]
  if h == nil then error("call it as req:" .. fname .. "(...), with a colon", 3) end
  return h
end
local function trim(s)  -- linear: no "^%s*(.-)%s*$", which is quadratic on long blanks
  local i = s_find(s, "%S")
  if i == nil then return "" end
  return s_match(s, "^.*%S", i)
end
local function editable(name, value, fname)
  if type(name) ~= "string" or not s_find(name, TOKEN) then
    error(s_format("bad argument #1 to '%s' (header name expected)", fname), 3)
  end
  if PROTECTED[s_lower(name)] then
    error(s_format("%s: header %s belongs to the proxy (framing/handshake) and may not be edited", fname, name), 3)
  end
  if value ~= nil then
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" or s_find(value, "[\r\n]") or s_find(value, "\0", 1, true) then
      error(s_format("bad argument #2 to '%s' (string without CR, LF or NUL expected)", fname), 3)
    end
  end
  return value
end

local HEAD = {}
HEAD.__index = HEAD
HEAD.__metatable = false
function HEAD.header(self, name)
  local h = heads(self, "header")
  want_string(name, "header", 1)
  local key = s_lower(name)
  for i = 1, #h, 2 do
    if s_lower(h[i]) == key then return h[i + 1] end
  end
  return nil
end
function HEAD.header_all(self, name)  -- every value, in order (Set-Cookie, ...)
  local h = heads(self, "header_all")
  want_string(name, "header_all", 1)
  local key, out = s_lower(name), {}
  for i = 1, #h, 2 do
    if s_lower(h[i]) == key then out[#out + 1] = h[i + 1] end
  end
  return out
end
function HEAD.set_header(self, name, value)
  local h = heads(self, "set_header")
  if value == nil then error("bad argument #2 to 'set_header' (string expected, got nil)", 2) end
  value = editable(name, value, "set_header")
  local key, out, done = s_lower(name), {}, false
  for i = 1, #h, 2 do
    if s_lower(h[i]) == key then
      if not done then out[#out + 1] = name; out[#out + 1] = value; done = true end
    else
      out[#out + 1] = h[i]; out[#out + 1] = h[i + 1]
    end
  end
  if not done then out[#out + 1] = name; out[#out + 1] = value end
  HEADS[self] = out
  record("set_header", name, value)
end
function HEAD.del_header(self, name)
  local h = heads(self, "del_header")
  editable(name, nil, "del_header")
  local key, out = s_lower(name), {}
  for i = 1, #h, 2 do
    if s_lower(h[i]) ~= key then out[#out + 1] = h[i]; out[#out + 1] = h[i + 1] end
  end
  HEADS[self] = out
  record("del_header", name)
end

local REQ = {}
for k, v in next, HEAD do REQ[k] = v end
REQ.__index = REQ
function REQ.cookie(self, name)  -- same rules as wsproxy.protocol.cookies.cookie_value
  local h = heads(self, "cookie")
  want_string(name, "cookie", 1)
  for i = 1, #h, 2 do
    if s_lower(h[i]) == "cookie" then
      for part in s_gmatch(h[i + 1], "[^;]+") do
        local eq = s_find(part, "=", 1, true)
        if eq and trim(s_sub(part, 1, eq - 1)) == name then
          local v = trim(s_sub(part, eq + 1))
          local a = s_find(v, '[^"]')
          if a == nil then return "" end
          return s_match(v, '^.*[^"]', a)
        end
      end
    end
  end
  return nil
end
local function unescape(s)
  s = s_gsub(s, "+", " ")
  return (s_gsub(s, "%%(%x%x)", function(hex) return s_char(tonumber(hex, 16)) end))
end
function REQ.query(self, name)  -- like urllib.parse.parse_qsl(keep_blank_values=True)
  heads(self, "query")
  want_string(name, "query", 1)
  local qs = QUERY[self] or ""
  local pos, n = 1, #qs
  while pos <= n do
    local amp = s_find(qs, "&", pos, true) or (n + 1)
    if amp > pos then
      local eq = s_find(qs, "=", pos, true)
      local k, v
      if eq and eq < amp then k, v = s_sub(qs, pos, eq - 1), s_sub(qs, eq + 1, amp - 1)
      else k, v = s_sub(qs, pos, amp - 1), "" end
      if unescape(k) == name then return unescape(v) end
    end
    pos = amp + 1
  end
  return nil
end

-- Event tables ------------------------------------------------------------------------
local READ_ONLY = {
  __newindex = function() error("frame and message tables are reused for each call and take no new fields; keep state in ctx.vars", 2) end,
  __metatable = false,
}
local F = setmetatable({dir = "", opcode = "", fin = false, len = 0, ts = 0}, READ_ONLY)
local M = setmetatable({dir = "", opcode = "", fin = true, len = 0, ts = 0}, READ_ONLY)

local handlers = {}
local BUILD = {}
function BUILD.CLIENT_ACCEPTED(h, conn, addr, pool, member)
  return h(conn_ctx(conn, addr, pool, member))
end
function BUILD.HTTP_REQUEST(h, conn, addr, pool, member, method, path, qs, host_, upgrade, ...)
  local req = setmetatable({method = method, path = path, query_string = qs, host = host_, upgrade = upgrade}, REQ)
  HEADS[req] = {...}
  QUERY[req] = qs
  return h(conn_ctx(conn, addr, pool, member), req)
end
local function lb_event(h, conn, addr, pool, member, lb_pool, lb_member, attempt, reason, status, ...)
  local lb = {pool = lb_pool, member = lb_member, attempt = attempt, reason = reason, status = status, tried = {...}}
  return h(conn_ctx(conn, addr, pool, member), lb)
end
BUILD.LB_SELECTED = lb_event
BUILD.LB_FAILED = lb_event
function BUILD.HTTP_RESPONSE(h, conn, addr, pool, member, status, reason, ...)
  local res = setmetatable({status = status, reason = reason}, HEAD)
  HEADS[res] = {...}
  return h(conn_ctx(conn, addr, pool, member), res)
end
function BUILD.WS_OPEN(h, conn, addr, pool, member)
  return h(conn_ctx(conn, addr, pool, member))
end
function BUILD.WS_FRAME(h, conn, dir, opcode, fin, len, payload, ts)
  local f = F
  f.dir, f.opcode, f.fin, f.len, f.ts = dir, opcode, fin, len, ts
  if payload ~= nil and f.payload ~= nil then f.payload = payload else rawset(f, "payload", payload) end
  return h(conns[conn] or get_ctx(conn), f)
end
function BUILD.WS_MESSAGE(h, conn, dir, opcode, len, payload, ts)
  local m = M
  m.dir, m.opcode, m.len, m.ts = dir, opcode, len, ts
  if payload ~= nil and m.payload ~= nil then m.payload = payload else rawset(m, "payload", payload) end
  return h(conns[conn] or get_ctx(conn), m)
end
function BUILD.WS_CLOSE(h, conn, addr, pool, member, dir, code, reason)
  return h(conn_ctx(conn, addr, pool, member), {dir = dir, code = code, reason = reason})
end
function BUILD.CLIENT_CLOSED(h, conn, addr, pool, member)
  return h(conn_ctx(conn, addr, pool, member))
end

-- The sandbox -------------------------------------------------------------------------
local function is_scalar(v)
  local t = type(v)
  return t == "nil" or t == "string" or t == "number" or t == "boolean"
end
local FILTER_VALUE = "P.filters: values are strings, numbers, booleans or lists of them"
local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end
local safe_table = copy(table)
safe_table.move, safe_table.sort = safe_move, safe_sort
local env = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
  tonumber = tonumber, tostring = tostring, type = type, unpack = unpack, _VERSION = _VERSION,
  rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = rawset,
  getmetatable = getmetatable, setmetatable = safe_setmetatable,
  pcall = safe_pcall, xpcall = safe_xpcall, collectgarbage = safe_collectgarbage, print = safe_print,
  string = copy(string), table = safe_table, math = copy(math),
  utf8 = utf8 and copy(utf8), bit = bit and copy(bit),
  os = {time = os_time, clock = os_clock},
  log = log, shared = shared, metric = metric,
}
env._G = env

function BUILD.__load(_, src, chunkname, options)
  if s_byte(src, 1) == 27 then
    error(s_sub(chunkname, 2) .. ": precompiled (binary) chunks are refused; plugins load from source text", 0)
  end
  env.options = options
  local chunk, err = load(src, chunkname, "t", env)
  if chunk == nil then error(err, 0) end
  local P = chunk()
  if type(P) ~= "table" then
    error(s_sub(chunkname, 2) .. ": the file must end with 'return P', a table of event functions (it returned " .. type(P) .. ")", 0)
  end
  handlers = {}
  for k, v in next, P do
    if type(k) == "string" and type(v) == "function" and s_find(k, "^[%u_]+$") then
      handlers[k] = v
      record("handler", k)
    end
  end
  local filters = rawget(P, "filters")
  if filters ~= nil then
    if type(filters) ~= "table" then error("P.filters must be a table like { WS_FRAME = { dir = \"client\" } }", 0) end
    for ev, f in next, filters do
      if type(ev) ~= "string" or type(f) ~= "table" then
        error("P.filters maps event names to tables, like { WS_FRAME = { dir = \"client\" } }", 0)
      end
      for key, value in next, f do
        if type(key) ~= "string" then error("P.filters." .. ev .. ": keys are filter names", 0) end
        if type(value) == "table" then
          record("filter_list", ev, key)
          local i = 1
          while rawget(value, i) ~= nil do
            local item = rawget(value, i)
            if not is_scalar(item) then error(FILTER_VALUE, 0) end
            record("filter_item", ev, key, item)
            i = i + 1
          end
        elseif is_scalar(value) then
          record("filter", ev, key, value)
        else
          error(FILTER_VALUE, 0)
        end
      end
    end
  end
  return "meta", rawget(P, "name"), rawget(P, "priority"), rawget(P, "on_error")
end

-- The worker --------------------------------------------------------------------------
local MEMORY_ERROR = "not enough memory"
-- At most 6 values cross a yield: lupa moves yielded values to the main stack without
-- growing it (more would overflow it), so records are fetched with records() instead.
local function invalid(msg)
  return "error", "invalid", msg, nil, nil, nrec
end
local function finish(ok, kind, a1, a2, a3)
  armed = false
  if not ok then
    local err = kind
    local what = exhausted and "budget" or (err == MEMORY_ERROR and "memory" or "error")
    if type(err) == "number" then err = tostring(err)
    elseif type(err) ~= "string" then err = "(error object is a " .. type(err) .. " value)" end
    return "error", what, err, nil, nil, nrec
  end
  if kind == nil then
    if nrec == 0 then return end  -- pass, nothing recorded: the hot path returns nothing
  elseif type(kind) ~= "string" then
    return invalid("a handler returns nil or a verdict name (a string), not a " .. type(kind))
  end
  if kind == "respond" and a3 ~= nil then
    if type(a3) ~= "table" then return invalid("respond headers must be a table of name = value") end
    for k, v in next, a3 do  -- raw traversal: no plugin metamethod runs here
      if type(v) == "number" then v = tostring(v) end
      if type(k) ~= "string" or type(v) ~= "string" then
        return invalid("respond headers must be a table of name = value strings")
      end
      local n = nrec
      records[n + 1], records[n + 2], records[n + 3], records[n + 4] = "resp_header", k, v, nil
      nrec = n + 4
    end
    a3 = nil
  end
  if not (is_scalar(a1) and is_scalar(a2) and is_scalar(a3)) then
    return invalid("verdict '" .. kind .. "' takes strings and numbers, not tables or functions")
  end
  return "ok", kind, a1, a2, a3, nrec
end

local function handle(event, ...)
  if nrec > 0 then
    for i = 1, nrec do records[i] = nil end
    nrec = 0
  end
  current_event, ticks, exhausted, host_calls, armed = event, 0, false, 0, true
  return finish(pcall(BUILD[event], handlers[event], ...))
end
local function serve(...)
  return serve(co_yield(handle(...)))
end
local function new_worker()
  local co = co_create(function() return serve(co_yield()) end)
  if sethook and budget_ticks > 0 then sethook(co, count_hook, "", tick) end
  co_resume(co)  -- run to the first yield: a suspended thread that Python send()s jobs to
  return co
end

for _, name in ipairs({"python", "debug", "io", "os", "package", "require", "load", "loadstring",
                       "loadfile", "dofile", "collectgarbage", "coroutine", "jit", "ffi", "module",
                       "newproxy", "setfenv", "getfenv", "print"}) do
  _G[name] = nil
end

return {
  new_worker = new_worker,
  sync = function(conn, addr, pool, member) conn_ctx(conn, addr, pool, member) end,
  release = function(conn) conns[conn] = nil end,
  records = function() return unpack(records, 1, nrec) end,  -- a plain call: any count is fine
  memory_kib = function() return collectgarbage("count") end,
}
'''
