-- frame_guard: police what clients send over a WebSocket, closing the connection with the
-- code RFC 6455 has for each fault:
--   1009 a data frame longer than max_frame bytes (decided from the frame header: the
--        payload is neither unmasked nor read; a frame of exactly max_frame bytes passes);
--   1003 a binary frame when text_only is set;
--   1008 a text message whose JSON field `field` names a forbidden command, such as
--        {"cmd": "shutdown"} (checked on the reassembled message, so fragmentation
--        cannot split the command; every occurrence of the field counts).
-- Frames from the member are not checked.
--
-- Events:  WS_FRAME (client, text/binary/cont, header only), WS_MESSAGE (client, text)
-- Options: max_frame  largest frame payload accepted, in bytes   default 65536
--          text_only  close 1003 on binary frames                 default true
--          field      JSON field holding the command              default "cmd"
--          forbidden  command names that close with 1008          default ["admin", "shutdown"]
--
-- [[plugins]]
-- path = "plugins/frame_guard.lua"
-- options = { max_frame = 16384, text_only = true, field = "cmd", forbidden = ["admin", "debug"] }

local P = { name = "frame_guard", priority = 50,
            filters = { WS_FRAME = { dir = "client", payload = false, opcodes = { "text", "binary", "cont" } },
                        WS_MESSAGE = { dir = "client", opcodes = { "text" } } } }

local function option(name, default)
  if options[name] == nil then return default end
  return options[name]
end
local MAX_FRAME = option("max_frame", 65536)
local TEXT_ONLY = option("text_only", true)
local FORBIDDEN = {}
for _, command in ipairs(option("forbidden", { "admin", "shutdown" })) do FORBIDDEN[command] = true end
-- "cmd" : "name"  (the field name is matched literally: its punctuation is escaped)
local COMMAND = '"' .. option("field", "cmd"):gsub("%p", "%%%0") .. '"%s*:%s*"([^"]*)"'

function P.WS_FRAME(ctx, f)
  if f.len > MAX_FRAME then return "close", 1009, "frame too big" end
  if TEXT_ONLY and f.opcode == "binary" then return "close", 1003, "binary frames are not accepted" end
end

function P.WS_MESSAGE(ctx, m)
  for command in m.payload:gmatch(COMMAND) do
    if FORBIDDEN[command] then return "close", 1008, "forbidden command" end
  end
end

return P
