-- route_by_path: send a request to a pool chosen by its path prefix or its Host.
--
-- Events:  HTTP_REQUEST (every request head, WebSocket upgrades included).
-- Options: paths  path prefix -> pool; the longest matching prefix wins   default {}
--          hosts  Host (lower case, no port) -> pool                        default {}
--          A path rule wins over a host rule; no rule matches: the route's own pool.
--          With no options the plugin routes nothing.
--
-- [[plugins]]
-- path = "plugins/route_by_path.lua"
-- options = { paths = { "/chat/" = "chat", "/chat/admin/" = "admin" }, hosts = { "admin.example.com" = "admin" } }

local P = { name = "route_by_path", priority = 100 }

local paths = options.paths or {}
local hosts = {}
for host, pool in pairs(options.hosts or {}) do hosts[host:lower()] = pool end

function P.HTTP_REQUEST(ctx, req)
  local pool, longest = nil, 0
  for prefix, name in pairs(paths) do
    if #prefix > longest and req.path:sub(1, #prefix) == prefix then pool, longest = name, #prefix end
  end
  pool = pool or (req.host and hosts[req.host])
  if pool then ctx:use_pool(pool) end
end

return P
