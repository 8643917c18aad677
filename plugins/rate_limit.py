"""rate_limit: limit each client connection to `rate` messages per second, with bursts of
up to `burst`, and close it with 1008 when it sends faster. A token bucket kept in
ctx.vars: per connection, no shared store, no clock call (f.ts is the frame's monotonic
time). A message counts once, at its final frame (fin_only), whatever its fragments;
ping/pong/close frames do not count. The payload is never read.

Events:  WS_FRAME (client, text/binary/cont, fin only, header only)
Options: rate   messages per second, refill rate of the bucket   default 20
         burst  bucket size: messages accepted back to back      default 40

[[plugins]]
path = "plugins/rate_limit.py"
options = { rate = 5, burst = 10 }
"""

from wsproxy.plugin import Plugin, close, on


class RateLimit(Plugin):
    name = "rate_limit"

    def setup(self):
        self.rate = self.options.get("rate", 20)
        self.burst = self.options.get("burst", 40)

    @on("WS_FRAME", dir="client", payload=False, fin_only=True, opcodes=("text", "binary", "cont"))
    def limit(self, ctx, f):
        v = ctx.vars
        tokens = min(self.burst, v.get("tokens", self.burst) + (f.ts - v.get("t", f.ts)) * self.rate)
        v["t"] = f.ts
        if tokens < 1:
            return close(1008, "message rate limit exceeded")
        v["tokens"] = tokens - 1
