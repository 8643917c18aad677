-- rewrite_server_text: replace text in the messages the member sends to the client, e.g.
-- an internal host name leaking into JSON. Whole messages are rewritten (WS_MESSAGE, so a
-- match split across fragments is still found); the core re-frames the result. Search
-- texts are plain text, not patterns, applied in sorted order; messages larger than 1 MiB
-- and binary messages pass untouched. With no options nothing is rewritten.
--
-- Events:  WS_MESSAGE (server, text, up to 1 MiB)
-- Options: rewrites  search text -> replacement   default {}
--
-- [[plugins]]
-- path = "plugins/rewrite_server_text.lua"
-- options = { rewrites = { "internal.example.com" = "api.example.com" } }

local P = { name = "rewrite_server_text",
            filters = { WS_MESSAGE = { dir = "server", opcodes = { "text" }, max_size = 1048576 } } }

local RULES = {}  -- { {pattern, replacement}, ... }: the plain texts escaped for gsub
local froms = {}
for from in pairs(options.rewrites or {}) do
  if from == "" then error("options.rewrites: a search text may not be empty") end
  froms[#froms + 1] = from
end
table.sort(froms)
for _, from in ipairs(froms) do
  RULES[#RULES + 1] = { from:gsub("%p", "%%%0"), (options.rewrites[from]:gsub("%%", "%%%%")) }
end

function P.WS_MESSAGE(ctx, m)
  local out, total = m.payload, 0
  for _, rule in ipairs(RULES) do
    local n
    out, n = out:gsub(rule[1], rule[2])
    total = total + n
  end
  if total > 0 then return "replace", out end
end

return P
