"""hash_by_header: balance by a consistent hash of a header, or else of a cookie, so that
one user (tenant, room...) keeps reaching the same member while the pool is unchanged.
The hashing (a ring with minimal remapping, health-aware) is the core's; the plugin only
supplies the key. No header and no cookie (or empty ones): the pool's own algorithm.

Events:  HTTP_REQUEST
Options: header  header whose value is the key; false = none   default "X-User-Id"
         cookie  cookie tried when the header is absent; false  default "uid"

[[plugins]]
path = "plugins/hash_by_header.py"
options = { header = "X-Tenant", cookie = "tenant" }
"""

from wsproxy.plugin import Plugin, on


class HashByHeader(Plugin):
    name = "hash_by_header"

    def setup(self):
        self.header = self.options.get("header", "X-User-Id")
        self.cookie = self.options.get("cookie", "uid")

    @on("HTTP_REQUEST")
    def pick(self, ctx, req):
        key = (self.header and req.header(self.header)) or (self.cookie and req.cookie(self.cookie))
        if key:
            ctx.hash_key(key)
