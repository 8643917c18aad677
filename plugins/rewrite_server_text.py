"""rewrite_server_text: replace text in the messages the member sends to the client, e.g.
an internal host name leaking into JSON. Whole messages are rewritten (WS_MESSAGE, so a
match split across fragments is still found); the core re-frames the result. Search
texts are plain text, not patterns, applied in sorted order; messages larger than 1 MiB
and binary messages pass untouched. With no options nothing is rewritten.

Events:  WS_MESSAGE (server, text, up to 1 MiB)
Options: rewrites  search text -> replacement   default {}

[[plugins]]
path = "plugins/rewrite_server_text.py"
options = { rewrites = { "internal.example.com" = "api.example.com" } }
"""

from wsproxy.plugin import Plugin, on, replace


class RewriteServerText(Plugin):
    name = "rewrite_server_text"

    def setup(self):
        rewrites = self.options.get("rewrites", {})
        if "" in rewrites:
            raise ValueError("options.rewrites: a search text may not be empty")
        self.rules = [(old.encode(), new.encode()) for old, new in sorted(rewrites.items())]

    @on("WS_MESSAGE", dir="server", opcodes="text", max_size=1 << 20)
    def rewrite(self, ctx, m):
        out = m.payload
        for old, new in self.rules:
            out = out.replace(old, new)
        if out != m.payload:
            return replace(out)
