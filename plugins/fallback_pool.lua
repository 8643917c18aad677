-- fallback_pool: when a pool cannot serve a request (no healthy member, or connecting or
-- the handshake to its member failed), try another member of the same pool up to
-- `retries` times, then send the request to the fallback pool. If the fallback pool
-- fails too, the plugin steps aside and the core answers as usual (502/503).
-- The fallback pool must exist in site.conf.
--
-- Events:  LB_FAILED
-- Options: pool     the pool to fall back to                             default "fallback"
--          retries  extra members of the failing pool to try first       default 0
--                   (never when the failure is "no_member")
--
-- [[plugins]]
-- path = "plugins/fallback_pool.lua"
-- options = { pool = "standby", retries = 1 }

local P = { name = "fallback_pool" }

local FALLBACK, RETRIES = options.pool or "fallback", options.retries or 0

function P.LB_FAILED(ctx, lb)
  if lb.pool == FALLBACK then return end                      -- nothing left to try
  if lb.reason ~= "no_member" and lb.attempt <= RETRIES then return "reselect" end
  log.warn("pool ", lb.pool, " failed (", lb.reason, "), falling back to ", FALLBACK)
  return "reselect", FALLBACK
end

return P
