-- PLUGINS.md's Lua example, plus header edits and a log line.
local P = { name = "route", priority = 100 }

function P.HTTP_REQUEST(ctx, req)
  if req.path:sub(1, 6) == "/chat/" then ctx:use_pool("chat") end
  local user = req:header("x-user-id")
  if user then ctx:hash_key(user) end
  req:set_header("X-Routed-By", "route")
  req:del_header("X-Debug")
  log.info("routed ", req.path, " for ", user or "anonymous")
end

function P.WS_MESSAGE(ctx, m)              -- m.dir: "client" (to member) | "server"
  if m.opcode == "text" and m.payload:find("forbidden", 1, true) then
    return "close", 1008, "policy"
  end
end

return P
