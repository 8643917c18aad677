-- hash_by_header: balance by a consistent hash of a header, or else of a cookie, so that
-- one user (tenant, room...) keeps reaching the same member while the pool is unchanged.
-- The hashing (a ring with minimal remapping, health-aware) is the core's; the plugin only
-- supplies the key. No header and no cookie (or empty ones): the pool's own algorithm.
--
-- Events:  HTTP_REQUEST
-- Options: header  header whose value is the key; false = none   default "X-User-Id"
--          cookie  cookie tried when the header is absent; false  default "uid"
--
-- [[plugins]]
-- path = "plugins/hash_by_header.lua"
-- options = { header = "X-Tenant", cookie = "tenant" }

local P = { name = "hash_by_header" }

local function option(name, default)
  if options[name] == nil then return default end
  return options[name]
end
local header, cookie = option("header", "X-User-Id"), option("cookie", "uid")

local function present(value)  -- nil for nil and ""
  if value ~= "" then return value end
end

function P.HTTP_REQUEST(ctx, req)
  local key = header and present(req:header(header))
  key = key or (cookie and present(req:cookie(cookie)))
  if key then ctx:hash_key(key) end
end

return P
