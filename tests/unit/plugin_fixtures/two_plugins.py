"""Two Plugin classes in one file, an async handler, setup() reading options."""

import asyncio

from wsproxy.plugin import Plugin, on, respond


class Auth(Plugin):
    name = "auth"
    priority = 10

    def setup(self):
        self.token = self.options.get("token", "secret")

    @on("HTTP_REQUEST")
    async def check(self, ctx, req):
        await asyncio.sleep(0)
        if req.header("authorization") != f"Bearer {self.token}":
            return respond(401, b"unauthorized", {"WWW-Authenticate": "Bearer"})
        ctx.vars["user"] = "u1"


class Audit(Plugin):
    name = "audit"
    on_error = "continue"

    @on("CLIENT_CLOSED")
    def closed(self, ctx):
        self.metric.incr("sessions")
        self.log.info("closed %s", ctx.id)
