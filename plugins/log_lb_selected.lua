-- log_lb_selected: one log line each time the load balancer picks a member (again on each
-- retry), e.g.  conn=42 client=192.0.2.10:50000 pool=chat member=10.0.0.5:9001 attempt=1
-- A logging plugin must never break traffic, so its errors only get logged
-- (on_error = "continue").
--
-- Events:  LB_SELECTED
-- Options: level  log level: "debug", "info", "warn" or "error"   default "info"
--
-- [[plugins]]
-- path = "plugins/log_lb_selected.lua"
-- options = { level = "info" }

local P = { name = "log_lb_selected", on_error = "continue" }

local emit = log[options.level or "info"] or error("options.level must be debug, info, warn or error")

function P.LB_SELECTED(ctx, lb)
  emit("conn=", ctx.id, " client=", ctx.client_addr or "-", " pool=", lb.pool,
       " member=", lb.member, " attempt=", lb.attempt)
end

return P
