"""The "inspect (Python)" benchmark variant's frame hook: sees every frame, changes nothing."""
from wsproxy.plugin import Plugin, on


class BenchNoop(Plugin):
    name = "bench-noop-py"

    @on("WS_FRAME")
    def frame(self, ctx, f):
        return None
