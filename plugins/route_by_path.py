"""route_by_path: send a request to a pool chosen by its path prefix or its Host.

Events:  HTTP_REQUEST (every request head, WebSocket upgrades included).
Options: paths  path prefix -> pool; the longest matching prefix wins   default {}
         hosts  Host (lower case, no port) -> pool                        default {}
         A path rule wins over a host rule; no rule matches: the route's own pool.
         With no options the plugin routes nothing.

[[plugins]]
path = "plugins/route_by_path.py"
options = { paths = { "/chat/" = "chat", "/chat/admin/" = "admin" }, hosts = { "admin.example.com" = "admin" } }
"""

from wsproxy.plugin import Plugin, on


class RouteByPath(Plugin):
    name = "route_by_path"
    priority = 100

    def setup(self):
        # longest prefix first, so the first match is the most specific one
        self.paths = sorted(self.options.get("paths", {}).items(), key=lambda rule: -len(rule[0]))
        self.hosts = {host.lower(): pool for host, pool in self.options.get("hosts", {}).items()}

    @on("HTTP_REQUEST")
    def route(self, ctx, req):
        pool = next((pool for prefix, pool in self.paths if req.path.startswith(prefix)), None)
        pool = pool or self.hosts.get(req.host)
        if pool:
            ctx.use_pool(pool)
