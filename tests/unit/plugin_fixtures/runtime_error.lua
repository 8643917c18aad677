local P = { name = "boom" }
local x = nil
local y = x.field   -- fails while the file runs (line 3)
return P
