-- rate_limit: limit each client connection to `rate` messages per second, with bursts of
-- up to `burst`, and close it with 1008 when it sends faster. A token bucket kept in
-- ctx.vars: per connection, no shared store, no clock call (f.ts is the frame's monotonic
-- time). A message counts once, at its final frame (fin_only), whatever its fragments;
-- ping/pong/close frames do not count. The payload is never read.
--
-- Events:  WS_FRAME (client, text/binary/cont, fin only, header only)
-- Options: rate   messages per second, refill rate of the bucket   default 20
--          burst  bucket size: messages accepted back to back      default 40
--
-- [[plugins]]
-- path = "plugins/rate_limit.lua"
-- options = { rate = 5, burst = 10 }

local P = { name = "rate_limit",
            filters = { WS_FRAME = { dir = "client", payload = false, fin_only = true,
                                     opcodes = { "text", "binary", "cont" } } } }

local RATE, BURST = options.rate or 20, options.burst or 40

function P.WS_FRAME(ctx, f)
  local v = ctx.vars
  local tokens = math.min(BURST, (v.tokens or BURST) + (f.ts - (v.t or f.ts)) * RATE)
  v.t = f.ts
  if tokens < 1 then return "close", 1008, "message rate limit exceeded" end
  v.tokens = tokens - 1
end

return P
