"""Plugins over real sockets: every event in order with its fields, every verdict (drop,
replace, close, respond, redirect, reselect, reject), inspect mode with a permessage-deflate
client, the relay mode `wsproxy check` reports, and a plugin that fails to load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed

from .support import closed_port, raw_request, run, site_conf


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    return _ws_connect(url, **kw)


def with_plugins(conf: str, *plugins: dict) -> str:
    for plugin in plugins:
        conf += "\n[[plugins]]\n" + "".join(f"{k} = {v}\n" for k, v in plugin.items())
    return conf


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return f'"{path}"'


RECORDER = """
from wsproxy.plugin import Plugin, on

class Recorder(Plugin):
    name = "recorder"

    def _note(self, event, **fields):
        self.log.info("EVENT " + event + " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items())))

    @on("CLIENT_ACCEPTED")
    def accepted(self, ctx):
        self._note("CLIENT_ACCEPTED", addr=ctx.client_addr)

    @on("HTTP_REQUEST")
    def request(self, ctx, req):
        self._note("HTTP_REQUEST", path=req.path, upgrade=req.header("upgrade"))

    @on("LB_SELECTED")
    def selected(self, ctx, lb):
        self._note("LB_SELECTED", pool=lb.pool, member=lb.member, attempt=lb.attempt)

    @on("HTTP_RESPONSE")
    def response(self, ctx, res):
        self._note("HTTP_RESPONSE", status=res.status)
        res.set_header("X-Plugin", "seen")

    @on("WS_OPEN")
    def ws_open(self, ctx):
        self._note("WS_OPEN", pool=ctx.pool, member=ctx.member)

    @on("WS_FRAME")
    def frame(self, ctx, f):
        self._note("WS_FRAME", dir=f.dir, opcode=f.opcode, fin=f.fin, len=f.len)

    @on("WS_MESSAGE")
    def message(self, ctx, m):
        self._note("WS_MESSAGE", dir=m.dir, opcode=m.opcode, payload=m.payload.decode())

    @on("WS_CLOSE")
    def ws_close(self, ctx, c):
        self._note("WS_CLOSE", dir=c.dir, code=c.code)

    @on("CLIENT_CLOSED")
    def closed(self, ctx):
        self._note("CLIENT_CLOSED")
"""


def events_of(proxy) -> list[str]:
    """The recorded events of the last connection that sent a request (the proxy's start-up
    check connects once without sending anything)."""
    events = [r["msg"][len("EVENT "):].strip() for r in proxy.logs() if str(r.get("msg", "")).startswith("EVENT ")]
    starts = [i for i, e in enumerate(events) if e.startswith("CLIENT_ACCEPTED")
              and i + 1 < len(events) and events[i + 1].startswith("HTTP_REQUEST")]
    return events[starts[-1]:] if starts else events


def test_every_event_fires_in_order_with_its_fields(members, proxy, tmp_path):
    m = members.ws("w")
    p = proxy(with_plugins(site_conf({"ws": [m.addr]}), {"path": write(tmp_path, "rec.py", RECORDER)}))

    async def go():
        async with ws_connect(p.ws_url + "/chat", compression=None) as ws:
            assert ws.response.headers.get("X-Plugin") == "seen"  # HTTP_RESPONSE edit on the 101
            await ws.send("hello")
            assert await ws.recv() == "hello"

    run(go())
    expected = [
        "CLIENT_ACCEPTED addr=127.0.0.1",
        "HTTP_REQUEST path=/chat upgrade=websocket",
        f"LB_SELECTED attempt=1 member={m.addr} pool=ws",
        "HTTP_RESPONSE status=101",
        f"WS_OPEN member={m.addr} pool=ws",
        "WS_FRAME dir=client fin=True len=5 opcode=text",
        "WS_MESSAGE dir=client opcode=text payload=hello",
        "WS_FRAME dir=server fin=True len=5 opcode=text",
        "WS_MESSAGE dir=server opcode=text payload=hello",
        "WS_CLOSE code=1000 dir=client",
        "WS_CLOSE code=1000 dir=server",
        "CLIENT_CLOSED",
    ]
    for _ in range(50):
        if "CLIENT_CLOSED" in events_of(p):
            break
        run(asyncio.sleep(0.1))
    assert events_of(p) == expected


GUARD_LUA = """
local P = { name = "guard" }
function P.WS_MESSAGE(ctx, m)
  if m.dir == "client" and m.payload:find("forbidden", 1, true) then
    return "close", 1008, "policy"
  end
  if m.dir == "client" and m.payload == "drop me" then
    return "drop"
  end
  if m.dir == "server" and m.opcode == "text" then
    return "replace", (m.payload:gsub("cat", "dog"))
  end
end
return P
"""


def test_lua_message_verdicts_with_a_deflate_client(members, proxy, tmp_path):
    m = members.ws("w")
    p = proxy(with_plugins(site_conf({"ws": [m.addr]}), {"path": write(tmp_path, "guard.lua", GUARD_LUA)}))

    async def go():
        # The websockets client offers permessage-deflate; on an inspect route the offer is
        # not forwarded, so the plugin reads plaintext and the echo stays intact.
        async with ws_connect(p.ws_url) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send("a cat and a cat")
            assert await ws.recv() == "a dog and a dog"  # replaced on the way back
            await ws.send("drop me")
            await ws.send(b"\x00\x01binary cat")
            assert await ws.recv() == b"\x00\x01binary cat"  # binary: not replaced; "drop me" never came back
            big = "cat " * 50000
            await ws.send(big)
            assert await ws.recv() == big.replace("cat", "dog")
            await ws.send("this is forbidden")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1008 and info.value.rcvd.reason == "policy"

    run(go())
    record = p.wait_log(lambda r: r.get("kind") == "ws")
    assert record is not None and record["close_code"] == 1008


FRAME_PY = """
from wsproxy.plugin import Plugin, on, close, drop, replace

class Frames(Plugin):
    @on("WS_FRAME", dir="client", opcodes=("binary",))
    def binary(self, ctx, f):
        return close(1003, "text only")

    @on("WS_FRAME", dir="client", opcodes=("text",))
    def text(self, ctx, f):
        if f.payload == b"skip":
            return drop()
        if f.payload.startswith(b"up:"):
            return replace(f.payload[3:].upper())
"""


def test_python_frame_verdicts(members, proxy, tmp_path):
    m = members.ws("w")
    p = proxy(with_plugins(site_conf({"ws": [m.addr]}), {"path": write(tmp_path, "frames.py", FRAME_PY)}))

    async def go():
        async with ws_connect(p.ws_url, compression=None) as ws:
            await ws.send("skip")
            await ws.send("up:shout")
            assert await ws.recv() == "SHOUT"
            await ws.send(b"\x01")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1003

    run(go())


ROUTER_LUA = """
local P = { name = "router", priority = 10 }
function P.HTTP_REQUEST(ctx, req)
  if req.path == "/teapot" then return "respond", 418, "short and stout" end
  if req.path == "/old" then return "redirect", "http://example.com/new" end
  if req.path == "/reject" then return "reject" end
  if req.path:sub(1, 6) == "/chat/" then ctx:use_pool("chat") end
  if req:header("x-fail") then ctx:use_pool("dead") end
  req:set_header("X-Routed-By", "lua")
end
function P.LB_FAILED(ctx, lb)
  if lb.pool == "dead" then return "reselect", "chat" end
end
return P
"""


def test_http_request_verdicts_and_reselect(members, proxy, tmp_path):
    web = members.http("web")
    chat = members.http("chat")
    conf = site_conf({"web": [web.addr], "chat": [chat.addr], "dead": [f"127.0.0.1:{closed_port()}"]})
    p = proxy(with_plugins(conf, {"path": write(tmp_path, "router.lua", ROUTER_LUA)}))
    teapot = raw_request(p.port, b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert teapot.status == 418 and teapot.body == b"short and stout"
    old = raw_request(p.port, b"GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
    assert old.status == 302 and old.header("Location") == "http://example.com/new"
    with pytest.raises((ConnectionError, OSError, ValueError, EOFError)):
        raw_request(p.port, b"GET /reject HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    routed = raw_request(p.port, b"GET /chat/room HTTP/1.1\r\nHost: x\r\n\r\n")
    assert routed.status == 200 and routed.header("X-Member") == "chat"
    plain = raw_request(p.port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    assert plain.header("X-Member") == "web"
    # The dead pool refuses; LB_FAILED reselects chat. The header edit reached the member.
    failed = raw_request(p.port, b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Fail: 1\r\n\r\n")
    assert failed.status == 200 and failed.header("X-Member") == "chat"
    assert ["X-Routed-By", "lua"] in json.loads(failed.body)["headers"]


def test_a_plugin_that_fails_to_load_rejects_the_config(tmp_path):
    bad = write(tmp_path, "bad.lua", "local P = {\nfunction P.HTTP_REQUEST(ctx, req)\n  return\nend\n")
    conf = tmp_path / "site.conf"
    conf.write_text(with_plugins(site_conf({"ws": ["127.0.0.1:1"]}).replace("$PORT", "1"), {"path": bad}))
    out = subprocess.run([sys.executable, "-m", "wsproxy", "check", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "plugins[0]" in out.stderr and "bad.lua:" in out.stderr


def test_check_prints_plugins_and_the_relay_mode(tmp_path):
    guard = write(tmp_path, "guard.lua", GUARD_LUA)
    conf = tmp_path / "site.conf"
    conf.write_text(with_plugins(site_conf({"ws": ["127.0.0.1:1"]}).replace("$PORT", "1"), {"path": guard}))
    out = subprocess.run([sys.executable, "-m", "wsproxy", "check", "-c", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "relay inspect (frame plugins)" in out.stdout
    assert "guard[lua](WS_MESSAGE)" in out.stdout


OPEN_PY = """
import asyncio
from wsproxy.plugin import Plugin, on, close

class Gate(Plugin):
    @on("HTTP_REQUEST")
    async def auth(self, ctx, req):
        await asyncio.sleep(0.01)  # an async check (a token service, say)
        ctx.vars["user"] = req.query("user")

    @on("WS_OPEN")
    def open(self, ctx):
        if ctx.vars.get("user") == "banned":
            return close(4003, "banned")
        ctx.send("client", "welcome " + (ctx.vars.get("user") or "?"))
"""


def test_async_http_request_ws_open_close_and_send(members, proxy, tmp_path):
    m = members.ws("w")
    p = proxy(with_plugins(site_conf({"ws": [m.addr]}), {"path": write(tmp_path, "gate.py", OPEN_PY)}))

    async def go():
        async with ws_connect(p.ws_url + "/?user=ann", compression=None) as ws:
            assert await ws.recv() == "welcome ann"  # ctx.send at WS_OPEN, before any echo
            await ws.send("hi")
            assert await ws.recv() == "hi"
        async with ws_connect(p.ws_url + "/?user=banned", compression=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 4003 and info.value.rcvd.reason == "banned"

    run(go())


RUNAWAY_LUA = """
local P = { name = "runaway" }
function P.WS_MESSAGE(ctx, m)
  if m.payload == "loop" then while true do end end
  if m.payload == "bomb" then local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1024) end end
end
return P
"""


@pytest.mark.parametrize("on_error,code", [("abort", 1011), ("continue", None)])
def test_runaway_plugin_is_stopped_and_the_worker_serves_on(members, proxy, tmp_path, on_error, code):
    m = members.ws("w")
    plugin = {"path": write(tmp_path, "runaway.lua", RUNAWAY_LUA), "on_error": f'"{on_error}"',
              "limits": '{ instructions = 100000, memory = "4MiB" }'}
    p = proxy(with_plugins(site_conf({"ws": [m.addr]}), plugin))

    async def one(payload: str) -> None:
        async with ws_connect(p.ws_url, compression=None) as ws:
            started = asyncio.get_running_loop().time()
            await ws.send(payload)
            if code is None:
                assert await ws.recv() == payload  # the error was logged; the message passed
            else:
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == code
            assert asyncio.get_running_loop().time() - started < 5

    async def go():
        for payload in ("loop", "bomb", "loop"):
            bystander = await ws_connect(p.ws_url, compression=None).__aenter__()
            await one(payload)
            await bystander.send("still here")  # another connection of the same worker
            assert await bystander.recv() == "still here"
            await bystander.close()

    run(go())
    kinds = {r.get("kind") for r in p.logs() if r.get("plugin") == "runaway" or "runaway" in str(r.get("msg"))}
    assert kinds  # the errors were logged


SELECT_LUA = """
local P = { name = "select" }
function P.LB_SELECTED(ctx, lb)
  if lb.member == BAD then return "reselect" end
end
return P
"""


def test_lb_selected_reselect_avoids_a_member(members, proxy, tmp_path):
    a, b = members.http("a"), members.http("b")
    script = SELECT_LUA.replace("BAD", f'"{a.addr}"')
    p = proxy(with_plugins(site_conf({"web": [a.addr, b.addr]}), {"path": write(tmp_path, "select.lua", script)}))
    served = {raw_request(p.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").header("X-Member")
              for _ in range(6)}
    assert served == {"b"}
