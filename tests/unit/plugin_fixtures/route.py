"""PLUGINS.md's Python example."""

from wsproxy.plugin import Plugin, close, on


class Route(Plugin):
    priority = 100

    @on("HTTP_REQUEST")
    def route(self, ctx, req):
        if req.path.startswith("/chat/"):
            ctx.use_pool("chat")

    @on("WS_MESSAGE", dir="client")
    def guard(self, ctx, m):
        if m.opcode == "text" and b"forbidden" in m.payload:
            return close(1008, "policy")
