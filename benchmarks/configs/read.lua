-- The "inspect, payload-reading" benchmark variant: every message's payload is searched.
local P = { name = "bench-read" }
function P.WS_MESSAGE(ctx, m)
  if m.payload:find("forbidden", 1, true) then
    return "close", 1008, "policy"
  end
end
return P
