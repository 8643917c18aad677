-- The "inspect" variant's frame hook: sees every frame, changes nothing (issue #5).
local P = { name = "bench-noop" }
function P.WS_FRAME(ctx, f)
end
return P
