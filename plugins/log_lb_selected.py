"""log_lb_selected: one log line each time the load balancer picks a member (again on each
retry), e.g.  conn=42 client=192.0.2.10:50000 pool=chat member=10.0.0.5:9001 attempt=1
A logging plugin must never break traffic, so its errors only get logged
(on_error = "continue").

Events:  LB_SELECTED
Options: level  log level: "debug", "info", "warn" or "error"   default "info"

[[plugins]]
path = "plugins/log_lb_selected.py"
options = { level = "info" }
"""

from wsproxy.plugin import Plugin, on


class LogLbSelected(Plugin):
    name = "log_lb_selected"
    on_error = "continue"

    def setup(self):
        level = self.options.get("level", "info")
        if level not in ("debug", "info", "warn", "error"):
            raise ValueError("options.level must be debug, info, warn or error")
        self.emit = getattr(self.log, level)

    @on("LB_SELECTED")
    def selected(self, ctx, lb):
        self.emit("conn=%s client=%s pool=%s member=%s attempt=%s",
                  ctx.id, ctx.client_addr or "-", lb.pool, lb.member, lb.attempt)
