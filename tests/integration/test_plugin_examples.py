"""The example plugins of plugins/ through the real proxy, over real sockets, in both languages.

tests/plugins/ runs each example through the plugin runtime with no sockets; here each one
is loaded from its real file (``plugins/<name>.lua`` / ``plugins/<name>.py``, ``options`` set
in its ``[[plugins]]`` table) by a ``python -m wsproxy`` subprocess in front of real members:

- route_by_path        paths / hosts options send HTTP requests and WebSocket upgrades to pools;
- hash_by_header       one X-User-Id (or uid cookie) keeps reaching one member of three;
- frame_guard          1009 past max_frame (exactly max_frame passes), 1003 binary, 1008 command;
- rewrite_server_text  server messages rewritten, client messages reach the member unchanged;
- rate_limit           a burst of `burst` passes, the next message closes 1008, tokens refill;
- log_lb_selected      the plugin's line in the proxy's JSON log, with the pool and the member;
- fallback_pool        a dead primary pool ends up answered by the fallback pool;
- socketio_sticky      a Socket.IO cluster with no `persist`, clients that keep no cookie:
                       every request of a session reaches the member that opened it.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import socketio
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed

from .redis_support import start_redis
from .support import (REPO, FrameParser, Member, build_frame, close_payload, closed_port, connect, raw_request,
                      recv_frames_until, run, site_conf, start_member, wait_until, ws_handshake_request, ws_key)
from .test_socketio_cluster import PING_INTERVAL, PING_TIMEOUT, Cluster, SioClient, sids_in_path

PLUGINS = REPO / "plugins"
LANGS = ("lua", "py")

lang = pytest.mark.parametrize("lang", LANGS)


# ----------------------------------------------------------------------------- helpers

def toml(v) -> str:
    """A TOML value; table keys are always quoted (option keys such as "/chat/" are not bare keys)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def with_example(conf: str, name: str, lang: str, options: dict | None = None, **keys) -> str:
    """conf + a [[plugins]] table loading the real plugins/<name>.<lang>."""
    table = {"path": str(PLUGINS / f"{name}.{lang}"), **keys}
    if options is not None:
        table["options"] = options
    return conf + "\n[[plugins]]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items())


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("compression", None)
    kw.setdefault("max_size", None)
    return _ws_connect(url, **kw)


def get(port: int, path: str = "/", headers: dict[str, str] | None = None, host: str = "x"):
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return raw_request(port, (head + "\r\n").encode())


async def closed_with(ws, timeout: float = 5.0):
    """The Close frame the proxy sent (ConnectionClosed.rcvd) once the connection ends."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return info.value.rcvd


def plugin_lines(p, plugin: str) -> list[dict]:
    return [r for r in p.logs() if r.get("plugin") == plugin]


# ----------------------------------------------------------------------------- route_by_path

@lang
def test_route_by_path(members, proxy, lang):
    web, chat, admin = members.http("web"), members.http("chat"), members.http("admin")
    live, ws_default = members.ws("live"), members.ws("wsdefault")
    conf = site_conf({"web": [web.addr], "chat": [chat.addr], "admin": [admin.addr], "live": [live.addr],
                      "wsdefault": [ws_default.addr]},
                     routes=[{"path_prefix": "/sock", "pool": "wsdefault"}, {"pool": "web"}])
    p = proxy(with_example(conf, "route_by_path", lang, {
        "paths": {"/chat/": "chat", "/chat/admin/": "admin", "/live/": "live"},
        "hosts": {"Admin.Example.com": "admin", "live.example.com": "live"},
    }))

    def member(path: str, host: str = "x") -> str | None:
        r = get(p.port, path, host=host)
        assert r.status == 200, (path, host, r.status, r.body)
        return r.header("X-Member")

    assert member("/") == "web"  # no rule matches: the route's own pool
    assert member("/other/chat/") == "web"  # a prefix, not a substring
    assert member("/chat/room") == "chat"
    assert member("/chat/admin/users") == "admin"  # the longest prefix wins, whatever the order
    assert member("/chat/adminx") == "chat"
    # host rules: keys lower-cased by the plugin, the request's Host lower-cased, port stripped
    assert member("/", host="admin.example.com") == "admin"
    assert member("/", host="ADMIN.Example.COM:8443") == "admin"
    assert member("/chat/room", host="admin.example.com") == "chat"  # a path rule wins over a host rule
    assert member("/", host="nobody.example.com") == "web"

    async def go():
        # a WebSocket upgrade is an HTTP_REQUEST too: /live/ goes to the live pool, not to the
        # route's pool (an HTTP member, which has no WebSocket at /live/room)
        async with ws_connect(p.ws_url + "/live/room") as ws:
            await ws.send("to live")
            assert await ws.recv() == "to live"
        # the route's own pool when no rule matches
        async with ws_connect(p.ws_url + "/sock/et") as ws:
            await ws.send("to default")
            assert await ws.recv() == "to default"

    run(go(), timeout=20)
    # by Host, on a path the route sends to wsdefault (a raw upgrade: websockets sets its own Host)
    s = connect(p.port)
    try:
        s.sendall(ws_handshake_request("/sock/by-host", host="Live.Example.com:80", key=ws_key()))
        parser, head = FrameParser(), b""
        while b"\r\n\r\n" not in head:
            data = s.recv(65536)
            assert data, head
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        parser.feed(rest)
        s.sendall(build_frame(0x1, b"by host"))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == 0x1)
        assert frame is not None and frame[2] == b"by host", seen
        s.sendall(build_frame(0x8, close_payload(1000)))
        recv_frames_until(s, parser, lambda f: f[0] == 0x8)
    finally:
        s.close()
    assert live.wait_record(lambda r: r["path"] == "/live/room") is not None
    assert live.wait_record(lambda r: r["path"] == "/sock/by-host") is not None
    assert ws_default.wait_record(lambda r: r["path"] == "/sock/et") is not None
    assert {r["path"] for r in live.records()} == {"/live/room", "/sock/by-host"}
    assert {r["path"] for r in ws_default.records()} == {"/sock/et"}


# ----------------------------------------------------------------------------- hash_by_header

@lang
def test_hash_by_header(members, proxy, lang):
    ms = [members.http(f"m{i}") for i in range(3)]
    conf = site_conf({"app": {"balance": "round_robin", "members": [m.addr for m in ms]}})
    p = proxy(with_example(conf, "hash_by_header", lang))  # defaults: header X-User-Id, cookie uid

    placed: dict[str, str] = {}
    for rnd in range(3):
        for u in range(20):
            user = f"user-{u}"
            r = get(p.port, "/", {"X-User-Id": user})
            assert r.status == 200
            if rnd == 0:
                placed[user] = r.header("X-Member")
            else:
                assert r.header("X-Member") == placed[user], f"{user} moved on round {rnd}"
    assert len(set(placed.values())) > 1, f"every user on one member: {placed}"
    # the cookie is the key when the header is absent (or empty): the same key, the same member
    for user in ("user-1", "user-2", "user-3"):
        r = get(p.port, "/", {"Cookie": f"other=1; uid={user}"})
        assert r.status == 200 and r.header("X-Member") == placed[user], user
        r = get(p.port, "/", {"X-User-Id": "", "Cookie": f"uid={user}"})
        assert r.status == 200 and r.header("X-Member") == placed[user], user
    # no key at all: the pool's own balancer (round robin) answers, over every member
    seen = set()
    for _ in range(6):
        r = get(p.port, "/")
        assert r.status == 200
        seen.add(r.header("X-Member"))
    assert seen == {m.name for m in ms}


# ----------------------------------------------------------------------------- frame_guard

@lang
def test_frame_guard(members, proxy, lang):
    m = members.ws("w")
    p = proxy(with_example(site_conf({"ws": [m.addr]}), "frame_guard", lang,
                           {"max_frame": 1024, "text_only": True, "forbidden": ["admin", "shutdown"]}))
    url = p.ws_url + "/guard"

    async def go():
        async with ws_connect(url) as ws:
            exact = "x" * 1024
            await ws.send(exact)  # exactly max_frame: passes
            assert await ws.recv() == exact
            await ws.send('{"cmd": "status", "note": "admin"}')  # only the field counts
            assert await ws.recv() == '{"cmd": "status", "note": "admin"}'
            await ws.send(["short ", "fragments ", "y" * 1024])  # every fragment within max_frame
            assert await ws.recv() == "short fragments " + "y" * 1024
            await ws.send("x" * 1025)  # one byte more
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1009, rcvd

        async with ws_connect(url) as ws:  # a continuation frame is a data frame too
            await ws.send(["ok", "z" * 1025])
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1009, rcvd

        async with ws_connect(url) as ws:
            await ws.send(b"\x00\x01")
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1003, rcvd

        async with ws_connect(url) as ws:
            await ws.send('{"cmd" : "shutdown"}')
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1008, rcvd

        async with ws_connect(url) as ws:  # split across fragments: checked on the whole message
            await ws.send(['{"id": 1, "cmd": "adm', 'in"}'])
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1008, rcvd

    run(go(), timeout=30)
    # the member got a Close with the same code (close goes to both peers), never the bad frame
    codes = sorted(r["rcvd_code"] for r in wait_until(lambda: len(m.records()) >= 5 and m.records(), 5))
    assert codes == [1003, 1008, 1008, 1009, 1009], m.records()
    # the fragmented messages that were closed never completed at the member
    assert sorted(r["messages"] for r in m.records()) == [0, 0, 0, 0, 3], m.records()


@lang
def test_frame_guard_options(members, proxy, lang):
    """text_only = false lets binary through; `field` and `forbidden` replace the defaults."""
    m = members.ws("w")
    p = proxy(with_example(site_conf({"ws": [m.addr]}), "frame_guard", lang,
                           {"text_only": False, "field": "op.name", "forbidden": ["debug"]}))

    async def go():
        async with ws_connect(p.ws_url) as ws:
            await ws.send(b"\x00binary")
            assert await ws.recv() == b"\x00binary"
            for ok in ('{"cmd": "shutdown"}', '{"op.name": "admin"}', '{"opXname": "debug"}'):
                await ws.send(ok)
                assert await ws.recv() == ok
            await ws.send('{"op.name": "debug"}')
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1008, rcvd

    run(go(), timeout=20)


# ----------------------------------------------------------------------------- rewrite_server_text

@lang
def test_rewrite_server_text(members, proxy, lang):
    # the member's name is what it sends first on /whoami: a message that starts at the member
    m = members.ws("internal.example.com")
    p = proxy(with_example(site_conf({"ws": [m.addr]}), "rewrite_server_text", lang, {"rewrites": {
        "internal.example.com": "api.example.com",
        "q": "qq",  # applied on the way in as well, this would give "qqqq"
        "cat": "dog", "dog": "cow",  # sorted order: cat -> dog, then dog -> cow
    }}))

    async def go():
        async with ws_connect(p.ws_url + "/whoami") as ws:
            assert await ws.recv() == "api.example.com"
            await ws.send("q")
            assert await ws.recv() == "qq"  # not "qqqq": the client's message reached the member as "q"
            await ws.send("internal.example.com")
            assert await ws.recv() == "api.example.com"
            await ws.send("the cat")
            assert await ws.recv() == "the cow"
            await ws.send("no match here")
            assert await ws.recv() == "no match here"
            await ws.send(b"a binary cat")
            assert await ws.recv() == b"a binary cat"  # binary: untouched
            fits = "cat " * 262144  # exactly 1 MiB: within max_size, rewritten
            await ws.send(fits)
            assert await ws.recv() == "cow " * 262144

    run(go(), timeout=20)


@lang
def test_rewrite_server_text_passes_messages_over_1mib_untouched(members, proxy, lang):
    """plugins/rewrite_server_text: "messages larger than 1 MiB and binary messages pass
    untouched" (its WS_MESSAGE filter has max_size = 1 MiB)."""
    m = members.ws("w")
    p = proxy(with_example(site_conf({"ws": [m.addr]}), "rewrite_server_text", lang,
                           {"rewrites": {"cat": "dog"}}))

    async def go():
        async with ws_connect(p.ws_url) as ws:
            big = "cat " * 262145  # 1 MiB + 4 bytes
            await ws.send(big)
            assert await ws.recv() == big
            await ws.send("cat")
            assert await ws.recv() == "dog"

    run(go(), timeout=20)


# ----------------------------------------------------------------------------- rate_limit

@lang
def test_rate_limit(members, proxy, lang):
    m = members.ws("w")
    # rate 1/s: the burst and the message after it go out within a few ms, far from the
    # second a token takes to come back, so the outcome does not depend on the machine's load
    p = proxy(with_example(site_conf({"ws": [m.addr]}), "rate_limit", lang, {"rate": 1, "burst": 5}))

    async def go():
        async with ws_connect(p.ws_url) as ws:
            for i in range(5):  # the burst passes, each echoed
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
            await ws.ping()  # control frames do not count
            await ws.send("one too many")
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1008, rcvd

        async with ws_connect(p.ws_url) as ws:  # a bucket per connection: full again
            for i in range(5):
                await ws.send(f"n{i}")
                assert await ws.recv() == f"n{i}"
            await asyncio.sleep(2.5)  # 2.5 tokens back (f.ts is in seconds)
            for i in range(2):
                await ws.send(f"r{i}")
                assert await ws.recv() == f"r{i}"
            await ws.send("over again")  # 0.5 token left
            rcvd = await closed_with(ws)
            assert rcvd is not None and rcvd.code == 1008, rcvd

    run(go(), timeout=20)
    assert sorted(r["messages"] for r in wait_until(lambda: len(m.records()) >= 2 and m.records(), 5)) == [5, 7]


# ----------------------------------------------------------------------------- log_lb_selected

@lang
def test_log_lb_selected(members, proxy, lang):
    a, b = members.http("a"), members.http("b")
    w = members.ws("w")
    conf = site_conf({"web": {"balance": "round_robin", "members": [a.addr, b.addr]}, "live": [w.addr]},
                     routes=[{"path_prefix": "/live", "pool": "live"}, {"pool": "web"}])
    p = proxy(with_example(conf, "log_lb_selected", lang, {"level": "warn"}))

    got = [get(p.port, f"/n{i}").header("X-Member") for i in range(2)]
    assert sorted(got) == ["a", "b"]

    async def go():
        async with ws_connect(p.ws_url + "/live") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"

    run(go(), timeout=10)
    pattern = re.compile(r"^conn=(\S+) client=127\.0\.0\.1(:\d+)? pool=(\S+) member=(\S+) attempt=1$")
    lines = wait_until(lambda: len(plugin_lines(p, "log_lb_selected")) >= 3 and plugin_lines(p, "log_lb_selected"), 5)
    assert lines and len(lines) == 3, plugin_lines(p, "log_lb_selected")
    seen = []
    for r in lines:
        assert r["level"] == "warning", r
        match = pattern.match(r["msg"])
        assert match, r
        seen.append((match.group(3), match.group(4)))
    assert sorted(seen) == sorted([("web", a.addr), ("web", b.addr), ("live", w.addr)]), seen
    assert len({pattern.match(r["msg"]).group(1) for r in lines}) == 3  # one connection each


# ----------------------------------------------------------------------------- fallback_pool

LB_LINE = re.compile(r"^conn=(\S+) client=\S+ pool=(\S+) member=(\S+) attempt=(\d+)$")


def lb_lines(p) -> list[tuple[str, str, str, int]]:
    """log_lb_selected's lines as (conn, pool, member, attempt)."""
    out = []
    for r in plugin_lines(p, "log_lb_selected"):
        m = LB_LINE.match(r["msg"])
        assert m, r
        out.append((m.group(1), m.group(2), m.group(3), int(m.group(4))))
    return out


def fallback_conf(members, lang: str, options: dict) -> tuple[str, Member, list[str]]:
    """primary (two closed ports) for every path but /ws, wsprimary (a closed port) for /ws;
    the pool to fall back to is "standby", an HTTP member that also has a WebSocket echo at /ws."""
    standby = members.http("standby")
    dead = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    conf = site_conf({"primary": dead, "wsprimary": [dead[0]], "standby": [standby.addr]},
                     routes=[{"path": "/ws", "pool": "wsprimary"}, {"pool": "primary"}])
    conf = with_example(conf, "fallback_pool", lang, options)
    return with_example(conf, "log_lb_selected", lang), standby, dead


@lang
def test_fallback_pool(members, proxy, lang):
    conf, standby, dead = fallback_conf(members, lang, {"pool": "standby"})
    p = proxy(conf)
    for i in range(4):
        r = get(p.port, f"/r{i}")
        assert r.status == 200 and r.header("X-Member") == "standby", (r.status, r.body)
    # each request: LB_FAILED fires after each failed connect; with retries = 0 the plugin
    # falls back at the first failure, so at most one primary member, then the standby
    lines = wait_until(lambda: len({c for c, *_ in lb_lines(p)}) >= 4 and lb_lines(p), 5)
    conns = list(dict.fromkeys(c for c, *_ in lines))
    assert len(conns) == 4, lines
    for i, conn in enumerate(conns):
        picks = [(pool, member) for c, pool, member, _ in lines if c == conn]
        assert picks[-1] == ("standby", standby.addr), picks
        assert {pool for pool, _ in picks[:-1]} <= {"primary"}, picks
        tried = {member for _, member in picks[:-1]}
        assert len(tried) <= 1 and tried <= set(dead), picks
    warns = [r for r in plugin_lines(p, "fallback_pool") if r["level"] == "warning"]
    assert warns and all(re.match(r"^pool primary failed \((refused|no_member)\), falling back to standby$",
                                  r["msg"]) for r in warns), warns

    async def go():  # a WebSocket upgrade falls back the same way
        async with ws_connect(p.ws_url + "/ws") as ws:
            await ws.send("via fallback")
            assert await ws.recv() == "via fallback"

    run(go(), timeout=10)
    seen = json.loads(get(standby.port, "/seen").body)
    assert ["GET", "/ws"] in seen and [["GET", f"/r{i}"] in seen for i in range(4)] == [True] * 4, seen


@lang
def test_fallback_pool_with_retries(members, proxy, lang):
    """retries = 1: one more member of primary is tried, then standby answers."""
    conf, standby, dead = fallback_conf(members, lang, {"pool": "standby", "retries": 1})
    p = proxy(conf)
    r = get(p.port, "/r")
    assert r.status == 200 and r.header("X-Member") == "standby", (r.status, r.body)


# ----------------------------------------------------------------------------- socketio_sticky

SIO_COOKIE = "io"


@pytest.fixture
def sio_cluster(tmp_path):
    """test_socketio_cluster's cluster, with --cookie io on both members (Engine.IO then names
    the sid in `Set-Cookie: io=<sid>` on each polling handshake). redis-server missing: the
    same outcome as the existing cluster tests (start_redis raises with the install hint)."""
    redis_server = start_redis(tmp_path)
    started: list[Member] = []
    try:
        for name in ("a", "b"):
            started.append(start_member("socketio_server.py", name, tmp_path, record=True,
                                        extra_args=("--redis", redis_server.url, "--cookie", SIO_COOKIE,
                                                    "--ping-interval", PING_INTERVAL,
                                                    "--ping-timeout", PING_TIMEOUT)))
        assert wait_until(lambda: redis_server.command("PUBSUB", "NUMSUB", "socketio")[1] >= 2, 10)
        yield Cluster(redis_server.url, *started)
    finally:
        for m in started:
            m.kill()
        redis_server.stop()


def sticky_conf(cluster: Cluster, lang: str, cookie: str = SIO_COOKIE) -> str:
    # no `persist`: the plugin is the only stickiness there is
    pool = {"balance": "round_robin", "members": [cluster.a.addr, cluster.b.addr]}
    conf = site_conf({"socketio": pool}, routes=[{"path_prefix": "/socket.io/", "pool": "socketio"}])
    return with_example(conf, "socketio_sticky", lang, {"cookie": cookie})


@lang
def test_socketio_sticky_without_persist_or_client_cookies(sio_cluster, proxy, lang):
    """Polling-only and polling-then-WebSocket clients, six at once, none keeping cookies
    (python-socketio's default client on http://127.0.0.1 drops them, see SioClient), behind
    round robin with no `persist`: the plugin alone keeps each session on its member."""
    cluster = sio_cluster
    p = proxy(sticky_conf(cluster, lang))
    clients: list[SioClient] = []

    async def main():
        clients.extend(SioClient(kind, keep_cookies=False) for kind in ("polling", "default") * 3)
        try:
            connected = await asyncio.gather(*(c.connect(p.url) for c in clients))
            assert all(connected), [c for c in clients if c.error]
            await asyncio.gather(*(c.exchange(rounds=3, pause=0.3) for c in clients))
            return {c.id: c.sio.transport() for c in clients}
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    transports = run(main(), timeout=30)

    for c in clients:
        assert c.error is None and len(c.answers) == 6, c
        assert len(c.servers) == 1, f"{c} was answered by both servers: {c.answers}"
        want = "polling" if c.kind == "polling" else "websocket"
        assert transports[c.id] == want and c.answers[-1]["transport"] == want, (c, transports[c.id])
    assert {s for c in clients for s in c.servers} == {"a", "b"}, f"round robin left a server idle: {clients}"

    # The members' view: each session was opened once (nothing reconnected), on the member
    # that then answered the client; every request carrying its sid reached that member; the
    # only 400 allowed is the owner's own late answer to the long poll left pending at
    # disconnect (see PING_TIMEOUT in test_socketio_cluster).
    wait_until(lambda: len(cluster.records("disconnect")) >= len(clients), 5)
    http = cluster.records("http")
    opens = cluster.records("open")
    assert len(opens) == len(clients), opens
    for c in clients:
        rec = cluster.connect_record(c.sid)
        assert rec is not None and {rec["name"]} == c.servers, (c, rec)
        owner, eio_sid = rec["name"], rec["eio_sid"]
        assert cluster.opener_of(eio_sid) == owner, (c, eio_sid)
        on_sid = [(r["name"], r["transport"], r["status"]) for r in http if r["sid"] == eio_sid]
        assert {name for name, _, _ in on_sid} == {owner}, f"{c}: requests for {eio_sid} reached {on_sid}"
        assert sum(1 for *_, status in on_sid if status == 400) <= 1, (c, on_sid)
        if c.kind == "polling":  # the Socket.IO connect POST, long polls, the acked messages...
            assert len(on_sid) >= 4, (c, on_sid)
        else:  # the polling handshake, then the upgrade (?sid=...) on the same member
            assert (owner, "websocket", 101) in on_sid, (c, on_sid)
    # the clients really kept no cookie: stickiness came from the sid alone
    assert not [r for r in http if SIO_COOKIE in r.get("cookies", [])], "a client sent the io cookie back"
    # the proxy's view (its access log, upgrades included): every request naming a sid went
    # to the member that opened it
    owners = {r["sid"]: cluster.by_name(r["name"]).addr for r in opens}
    with_sid = [line for line in p.access_logs() if sids_in_path(line.get("path") or "") in owners]
    assert len(with_sid) >= len(clients), p.access_logs()
    wrong = [line for line in with_sid if line.get("member") != owners[sids_in_path(line["path"])]]
    assert not wrong, wrong


def test_socketio_sticky_control_wrong_cookie_name(sio_cluster, proxy):
    """The negative control: the same setup with the plugin told another cookie name learns
    no sid, so round robin splits the polling sessions and they fail. The assertions above
    can therefore fail; it is the plugin's learning from Set-Cookie that makes them pass."""
    cluster = sio_cluster
    p = proxy(sticky_conf(cluster, "lua", cookie="not_io"))
    clients: list[SioClient] = []

    async def main():
        for kind in ("polling", "default"):  # one at a time: round robin strictly alternates
            c = SioClient(kind, keep_cookies=False)
            clients.append(c)
            if await c.connect(p.url, wait_timeout=1):
                await c.exchange(rounds=1, pause=0)
            await c.close()

    run(main(), timeout=30)
    assert all(isinstance(c.error, socketio.exceptions.ConnectionError) for c in clients), clients
    refused = [r for r in cluster.records("http") if r["status"] == 400 and r["sid"]
               and cluster.opener_of(r["sid"]) not in (None, r["name"])]
    assert refused, cluster.records("http")
