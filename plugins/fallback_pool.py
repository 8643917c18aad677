"""fallback_pool: when a pool cannot serve a request (no healthy member, or connecting or
the handshake to its member failed), try another member of the same pool up to
`retries` times, then send the request to the fallback pool. If the fallback pool
fails too, the plugin steps aside and the core answers as usual (502/503).
The fallback pool must exist in site.conf.

Events:  LB_FAILED
Options: pool     the pool to fall back to                             default "fallback"
         retries  extra members of the failing pool to try first       default 0
                  (never when the failure is "no_member")

[[plugins]]
path = "plugins/fallback_pool.py"
options = { pool = "standby", retries = 1 }
"""

from wsproxy.plugin import Plugin, on, reselect


class FallbackPool(Plugin):
    name = "fallback_pool"

    def setup(self):
        self.fallback = self.options.get("pool", "fallback")
        self.retries = self.options.get("retries", 0)

    @on("LB_FAILED")
    def failed(self, ctx, lb):
        if lb.pool == self.fallback:
            return None  # nothing left to try
        if lb.reason != "no_member" and lb.attempt <= self.retries:
            return reselect()
        self.log.warn("pool %s failed (%s), falling back to %s", lb.pool, lb.reason, self.fallback)
        return reselect(self.fallback)
