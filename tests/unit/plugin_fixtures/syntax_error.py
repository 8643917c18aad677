from wsproxy.plugin import Plugin, on


class Broken(Plugin):
    @on("HTTP_REQUEST")
    def req(self, ctx, req)
        pass
