-- socketio_sticky: Socket.IO (Engine.IO) sticky sessions by the `sid` query parameter.
--
-- Engine.IO opens a session with a handshake, GET /socket.io/?EIO=4&transport=polling
-- (no sid), answered by whichever member the balancer picks. Every later request of the
-- session (each long poll, and the WebSocket upgrade) carries ?sid=<id> and must reach
-- that same member, or it answers 400 "Session ID unknown". Handshakes are balanced
-- normally; the plugin learns sid -> member from the handshake response and routes the
-- session's later requests there. A client that uses the WebSocket transport only needs
-- none of this.
--
-- Requirement: the member must name the sid in a cookie on the handshake response,
-- `Set-Cookie: io=<sid>; ...` (Engine.IO's cookie option: python-socketio
-- AsyncServer(cookie="io"), Node socket.io `cookie: true` or `cookie: { name: "io" }`).
-- The plugin reads no response body, only the Set-Cookie headers. A sid it never learned (no cookie,
-- or the entry expired after `ttl` seconds without a request) is balanced normally.
--
-- When the member is gone (down, drained, removed) its sessions are balanced normally
-- too (use_member is not strict): the new member answers 400 "Session ID unknown" and the
-- Socket.IO client reconnects with a fresh handshake, which is learned again.
--
-- The map lives in `shared`, which is per worker process (wsproxy runs one today); with
-- several workers, a session's requests would have to reach the same worker.
--
-- Events:  HTTP_REQUEST, HTTP_RESPONSE
-- Options: path    the Engine.IO path prefix                       default "/socket.io/"
--          cookie  the sid cookie the member sets                  default "io"
--          ttl     seconds a sid is remembered after its last use  default 120
--
-- [[plugins]]
-- path = "plugins/socketio_sticky.lua"
-- options = { path = "/socket.io/", cookie = "io", ttl = 120 }

local P = { name = "socketio_sticky", priority = 10 }

local PATH, TTL = options.path or "/socket.io/", options.ttl or 120
local SID_COOKIE = "^%s*" .. (options.cookie or "io"):gsub("%p", "%%%0") .. "=([^;%s]+)"

function P.HTTP_REQUEST(ctx, req)
  ctx.vars.handshake = false  -- per request: HTTP keep-alive reuses the connection
  if req.path:sub(1, #PATH) ~= PATH then return end
  local sid = req:query("sid")
  if sid == nil then
    ctx.vars.handshake = true  -- a new session: let the balancer choose
    return
  end
  local member = shared.get("sio:" .. sid)
  if member then
    shared.touch("sio:" .. sid, TTL)
    ctx:use_member(member)  -- not strict: a member that is gone means normal balancing
  end
end

function P.HTTP_RESPONSE(ctx, res)
  if not ctx.vars.handshake or res.status ~= 200 or ctx.member == nil then return end
  for _, cookie in ipairs(res:header_all("set-cookie")) do  -- every Set-Cookie, in order
    local sid = cookie:match(SID_COOKIE)
    if sid then
      shared.set("sio:" .. sid, ctx.member, TTL)
      return
    end
  end
end

return P
