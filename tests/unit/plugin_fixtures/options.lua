-- Reads its options (handed over at load) and keeps per-connection state in ctx.vars.
local P = { name = "options-lua", filters = { WS_FRAME = { dir = "client", payload = false } } }
local header = options.header or "X-Default"
local limit = options.limits and options.limits[2] or 0

function P.HTTP_REQUEST(ctx, req)
  ctx.vars.seen = (ctx.vars.seen or 0) + 1
  req:set_header(header, tostring(limit))
end

function P.WS_FRAME(ctx, f)
  ctx.vars.frames = (ctx.vars.frames or 0) + 1
  if f.payload ~= nil then error("payload = false must hide the payload") end
  if ctx.vars.frames > limit then return "close", 1008, "too many frames" end
end

return P
