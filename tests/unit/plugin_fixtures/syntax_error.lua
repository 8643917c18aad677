local P = { name = "broken" }

function P.HTTP_REQUEST(ctx, req)
  if req.path == "/" then
    return "respond", 200, "ok"
  -- the 'end' of the if is missing
end

return P
