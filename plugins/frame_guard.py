"""frame_guard: police what clients send over a WebSocket, closing the connection with the
code RFC 6455 has for each fault:
  1009 a data frame longer than max_frame bytes (decided from the frame header: the
       payload is neither unmasked nor read; a frame of exactly max_frame bytes passes);
  1003 a binary frame when text_only is set;
  1008 a text message whose JSON field `field` names a forbidden command, such as
       {"cmd": "shutdown"} (checked on the reassembled message, so fragmentation
       cannot split the command; every occurrence of the field counts).
Frames from the member are not checked.

Events:  WS_FRAME (client, text/binary/cont, header only), WS_MESSAGE (client, text)
Options: max_frame  largest frame payload accepted, in bytes   default 65536
         text_only  close 1003 on binary frames                 default true
         field      JSON field holding the command              default "cmd"
         forbidden  command names that close with 1008          default ["admin", "shutdown"]

[[plugins]]
path = "plugins/frame_guard.py"
options = { max_frame = 16384, text_only = true, field = "cmd", forbidden = ["admin", "debug"] }
"""

import re

from wsproxy.plugin import Plugin, close, on


class FrameGuard(Plugin):
    name = "frame_guard"
    priority = 50

    def setup(self):
        self.max_frame = self.options.get("max_frame", 65536)
        self.text_only = self.options.get("text_only", True)
        self.forbidden = {c.encode() for c in self.options.get("forbidden", ("admin", "shutdown"))}
        field = re.escape(self.options.get("field", "cmd").encode())
        self.command = re.compile(rb'"' + field + rb'"\s*:\s*"([^"]*)"')

    @on("WS_FRAME", dir="client", payload=False, opcodes=("text", "binary", "cont"))
    def frame(self, ctx, f):
        if f.len > self.max_frame:
            return close(1009, "frame too big")
        if self.text_only and f.opcode == "binary":
            return close(1003, "binary frames are not accepted")

    @on("WS_MESSAGE", dir="client", opcodes="text")
    def message(self, ctx, m):
        if any(command in self.forbidden for command in self.command.findall(m.payload)):
            return close(1008, "forbidden command")
