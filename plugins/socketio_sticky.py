"""socketio_sticky: Socket.IO (Engine.IO) sticky sessions by the `sid` query parameter.

Engine.IO opens a session with a handshake, GET /socket.io/?EIO=4&transport=polling
(no sid), answered by whichever member the balancer picks. Every later request of the
session (each long poll, and the WebSocket upgrade) carries ?sid=<id> and must reach
that same member, or it answers 400 "Session ID unknown". Handshakes are balanced
normally; the plugin learns sid -> member from the handshake response and routes the
session's later requests there. A client that uses the WebSocket transport only needs
none of this.

Requirement: the member must name the sid in a cookie on the handshake response,
`Set-Cookie: io=<sid>; ...` (Engine.IO's cookie option: python-socketio
AsyncServer(cookie="io"), Node socket.io `cookie: true` or `cookie: { name: "io" }`).
The plugin reads no response body, only the Set-Cookie headers. A sid it never learned (no cookie,
or the entry expired after `ttl` seconds without a request) is balanced normally.

When the member is gone (down, drained, removed) its sessions are balanced normally
too (use_member is not strict): the new member answers 400 "Session ID unknown" and the
Socket.IO client reconnects with a fresh handshake, which is learned again.

The map lives in `shared`, which is per worker process (wsproxy runs one today); with
several workers, a session's requests would have to reach the same worker.

Events:  HTTP_REQUEST, HTTP_RESPONSE
Options: path    the Engine.IO path prefix                       default "/socket.io/"
         cookie  the sid cookie the member sets                  default "io"
         ttl     seconds a sid is remembered after its last use  default 120

[[plugins]]
path = "plugins/socketio_sticky.py"
options = { path = "/socket.io/", cookie = "io", ttl = 120 }
"""

from wsproxy.plugin import Plugin, on


class SocketIOSticky(Plugin):
    name = "socketio_sticky"
    priority = 10

    def setup(self):
        self.path = self.options.get("path", "/socket.io/")
        self.cookie = self.options.get("cookie", "io")
        self.ttl = self.options.get("ttl", 120)

    @on("HTTP_REQUEST")
    def request(self, ctx, req):
        ctx.vars["handshake"] = False  # per request: HTTP keep-alive reuses the connection
        if not req.path.startswith(self.path):
            return
        sid = req.query("sid")
        if sid is None:
            ctx.vars["handshake"] = True  # a new session: let the balancer choose
            return
        member = self.shared.get("sio:" + sid)
        if member:
            self.shared.touch("sio:" + sid, self.ttl)
            ctx.use_member(member)  # not strict: a member that is gone means normal balancing

    @on("HTTP_RESPONSE")
    def response(self, ctx, res):
        if not ctx.vars.get("handshake") or res.status != 200 or ctx.member is None:
            return
        for name, value in res.headers:  # every Set-Cookie, in order
            cookie_name, _, rest = value.partition("=")
            sid = rest.partition(";")[0].strip()
            if name.lower() == "set-cookie" and cookie_name.strip() == self.cookie and sid:
                self.shared.set("sio:" + sid, ctx.member, self.ttl)
                return
