"""Python plugins: the wsproxy.plugin API, verdicts, async handlers, loading from a file."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest

from wsproxy.plugin import (DROP, Plugin, Verdict, close, drop, on, redirect, reject, replace, reselect,
                            respond)
from wsproxy.scripting.chain import PluginChain
from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import Limits
from wsproxy.scripting.loader import load_plugin
from wsproxy.scripting.objects import LbInfo, Request, Response
from wsproxy.scripting.python_plugins import PythonPlugin, load_python_plugins
from wsproxy.scripting.shared import SharedStore

FIXTURES = Path(__file__).parent / "plugin_fixtures"


def host(cls, *, on_error=None, timeout=5.0, shared=None, options=None) -> PythonPlugin:
    """Wrap a Plugin class defined in a test the way the loader does."""
    instance = cls()
    plugin = PythonPlugin(instance, path="<test>", on_error=on_error, listeners=None,
                          limits=Limits(timeout=timeout), index=0)
    instance.options = options or {}
    instance.log, instance.metric = plugin.log, plugin.metric
    instance.shared = shared or SharedStore()
    instance.setup()
    return plugin


def write(tmp_path, source: str, name: str = "plug.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# -- verdict constructors ---------------------------------------------------------------------

def test_verdict_constructors():
    assert drop() is DROP and DROP == Verdict("drop")
    assert replace("é") == Verdict("replace", data="é".encode())
    assert replace(bytearray(b"x")).data == b"x"
    assert close(1008, "policy") == Verdict("close", code=1008, reason="policy")
    assert close() == Verdict("close", code=1000, reason="")
    assert respond(403, "no", {"X-A": "1"}) == Verdict("respond", status=403, body=b"no", headers=(("X-A", "1"),))
    assert respond(200, headers=[("X-A", "1"), ("X-A", "2")]).headers == (("X-A", "1"), ("X-A", "2"))
    assert redirect("/x") == Verdict("redirect", url="/x", status=302)
    assert redirect("https://e/", 301).status == 301
    assert reselect() == Verdict("reselect") and reselect("other").pool == "other"
    assert reject() == Verdict("reject")


@pytest.mark.parametrize("make, message", [
    (lambda: close(1006), "may not be sent"),
    (lambda: close(999), "may not be sent"),
    (lambda: close(1000, "x" * 124), "longer than 123"),
    (lambda: close("1000"), "integer"),
    (lambda: respond(101), "200-599"),
    (lambda: respond(200, headers={"X": "a\nb"}), "CR, LF or NUL"),
    (lambda: respond(200, headers={"bad name": "v"}), "invalid header name"),
    (lambda: redirect("/x", 200), "301, 302"),
    (lambda: redirect("/x y"), "without spaces"),
    (lambda: replace(42), "bytes or str"),
    (lambda: reselect(""), "pool name"),
])
def test_verdict_constructors_validate(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_on_validates_at_class_definition():
    with pytest.raises(ValueError, match="unknown event"):
        on("WS_FRAMES")
    with pytest.raises(ValueError, match="does not apply to HTTP_REQUEST"):
        on("HTTP_REQUEST", dir="client")
    with pytest.raises(ValueError, match="unknown opcode"):
        on("WS_FRAME", opcodes=("txt",))
    with pytest.raises(ValueError, match='"text" and "binary"'):
        on("WS_MESSAGE", opcodes=("ping",))
    with pytest.raises(ValueError, match="max_message_size or max_size"):
        on("WS_MESSAGE", max_message_size=1, max_size=2)
    with pytest.raises(TypeError, match="must be plain functions"):
        class Bad(Plugin):
            @on("WS_FRAME")
            async def frame(self, ctx, f):
                pass


# -- each verdict through the chain ---------------------------------------------------------

def _dispatch(chain: PluginChain, event: str):
    session = chain.session(1, "127.0.0.1:1")
    if event == "HTTP_REQUEST":
        return asyncio.run(chain.http_request(session, Request("GET", "/", [("Host", "h")])))
    if event == "CLIENT_ACCEPTED":
        return chain.client_accepted(session)
    if event == "LB_SELECTED":
        return chain.lb_selected(session, LbInfo("p", "m:1"))
    if event == "LB_FAILED":
        return chain.lb_failed(session, LbInfo("p", None, 1, "refused"))
    if event == "WS_OPEN":
        return asyncio.run(chain.ws_open(session))
    if event == "WS_FRAME":
        return chain.ws_frame(session, "client", 1, True, 2, b"hi")
    if event == "WS_MESSAGE":
        return chain.ws_message(session, "client", 1, b"hi")
    raise AssertionError(event)


@pytest.mark.parametrize("event, verdict", [
    ("CLIENT_ACCEPTED", reject()),
    ("HTTP_REQUEST", respond(204)),
    ("HTTP_REQUEST", redirect("/login")),
    ("HTTP_REQUEST", reject()),
    ("LB_SELECTED", reselect()),
    ("LB_FAILED", reselect("fallback")),
    ("LB_FAILED", respond(503, b"down")),
    ("WS_OPEN", close(1008, "auth")),
    ("WS_FRAME", drop()),
    ("WS_FRAME", close(1009, "too big")),
    ("WS_MESSAGE", replace(b"HI")),
])
def test_each_verdict_through_the_chain(event, verdict):
    signature = "(self, ctx)" if event in ("CLIENT_ACCEPTED", "WS_OPEN") else "(self, ctx, obj)"
    namespace = {"on": on, "Plugin": Plugin, "verdict": verdict}
    exec(f"class P(Plugin):\n    @on({event!r})\n    def h{signature}:\n        return verdict\n", namespace)
    outcome = _dispatch(PluginChain([host(namespace["P"])]), event)
    assert outcome.verdict == verdict and outcome.plugin == "P"


@pytest.mark.parametrize("event, result, message", [
    ("HTTP_REQUEST", "drop()", "not allowed in HTTP_REQUEST"),
    ("WS_FRAME", "'drop'", "not str"),
    ("WS_FRAME", "respond(200)", "not allowed in WS_FRAME"),
    ("LB_SELECTED", "respond(503)", "not allowed in LB_SELECTED"),
    ("WS_MESSAGE", "replace(b'\\xff')", "valid UTF-8"),
])
def test_invalid_python_verdicts(event, result, message):
    namespace = {"on": on, "Plugin": Plugin, "drop": drop, "respond": respond, "replace": replace}
    exec(f"class P(Plugin):\n    @on({event!r})\n    def h(self, ctx, obj):\n        return {result}\n", namespace)
    outcome = _dispatch(PluginChain([host(namespace["P"])]), event)
    assert outcome.aborted and outcome.error.kind == "invalid" and message in outcome.error.message


def test_objects_and_actions():
    class P(Plugin):
        @on("HTTP_REQUEST")
        def req(self, ctx, req):
            assert (req.method, req.path, req.query_string, req.host, req.upgrade) == \
                ("GET", "/chat/x", "sid=a%2Fb", "example.com", "websocket")
            assert req.query("sid") == "a/b" and req.cookie("io") == "c1" and req.header("COOKIE") == "io=c1"
            assert (ctx.id, ctx.client_addr, ctx.pool) == (9, "1.2.3.4:5", "web")
            ctx.use_pool("chat")
            assert ctx.pool == "chat"
            ctx.use_member("10.0.0.1:9", strict=True)
            ctx.hash_key("u1")
            req.set_header("X-Added", "yes")

        @on("HTTP_RESPONSE")
        def res(self, ctx, res):
            assert res.status == 101 and res.header("upgrade") == "websocket" and res.reason == "Switching"
            res.set_header("X-Res", "1")

        @on("WS_FRAME", dir="server")
        def frame(self, ctx, f):
            assert (f.dir, f.opcode, f.fin, f.len, f.payload, f.ts) == ("server", "ping", True, 4, b"ping", 3.0)
            ctx.send("client", "hello")
            ctx.send("server", b"\x00", "binary")
            ctx.close(4000, "bye")

    chain = PluginChain([host(P)])
    session = chain.session(9, "1.2.3.4:5")
    session.pool = "web"
    req = Request("GET", "/chat/x?sid=a%2Fb", [("Host", "Example.com:80"), ("Upgrade", "websocket"), ("Cookie", "io=c1")])
    outcome = asyncio.run(chain.http_request(session, req))
    assert (outcome.actions.pool, outcome.actions.member, outcome.actions.strict, outcome.actions.hash_key) == \
        ("chat", "10.0.0.1:9", True, "u1")
    assert req.headers[-1] == ("X-Added", "yes")
    res = Response(101, [("Upgrade", "websocket")], "Switching")
    assert asyncio.run(chain.http_response(session, res)) is None
    assert res.headers == [("Upgrade", "websocket"), ("X-Res", "1")]
    outcome = chain.ws_frame(session, "server", 9, True, 4, b"ping", ts=3.0)
    assert outcome.actions.sends == [("client", b"hello", "text"), ("server", b"\x00", "binary")]
    assert outcome.actions.close == (4000, "bye") and outcome.verdict is None


@pytest.mark.parametrize("call, message", [
    ("ctx.use_pool('x')", "not available in WS_FRAME"),
    ("ctx.send('nowhere', 'x')", '"client" or "server"'),
    ("ctx.send('client', b'\\xff', 'text')", "valid UTF-8"),
    ("ctx.close(1005)", "may not be sent"),
    ("ctx.disable('NOPE')", "needs an event name"),
])
def test_bad_ctx_calls_raise_in_the_handler(call, message):
    namespace = {"on": on, "Plugin": Plugin}
    exec(f"class P(Plugin):\n    @on('WS_FRAME')\n    def h(self, ctx, f):\n        {call}\n", namespace)
    outcome = _dispatch(PluginChain([host(namespace["P"])]), "WS_FRAME")
    assert outcome.aborted and outcome.error.kind == "error" and message in outcome.error.message


def test_protected_headers_cannot_be_edited():
    class P(Plugin):
        @on("HTTP_REQUEST")
        def req(self, ctx, req):
            req.set_header("X-Fine", "1")
            req.set_header("Transfer-Encoding", "chunked")

    chain = PluginChain([host(P)])
    req = Request("GET", "/", [("Host", "h")])
    outcome = asyncio.run(chain.http_request(chain.session(1), req))
    assert outcome.aborted and "belongs to the proxy" in outcome.error.message
    assert req.headers == [("Host", "h")] and not req.edited  # the first edit was rolled back too


# -- async ------------------------------------------------------------------------------------

def test_async_handler_is_awaited():
    class P(Plugin):
        @on("HTTP_REQUEST")
        async def auth(self, ctx, req):
            await asyncio.sleep(0.01)
            ctx.vars["checked"] = True
            return respond(401) if req.header("authorization") is None else None

    plugin = host(P)
    chain = PluginChain([plugin])
    session = chain.session(1)
    outcome = asyncio.run(chain.http_request(session, Request("GET", "/", [])))
    assert outcome.verdict.status == 401
    assert session.view(plugin).vars == {"checked": True}
    assert asyncio.run(chain.http_request(session, Request("GET", "/", [("Authorization", "x")]))) is None


@pytest.mark.timeout(10)
def test_async_handler_timeout():
    class Slow(Plugin):
        @on("WS_OPEN")
        async def opened(self, ctx):
            ctx.close(1000, "never applied")
            await asyncio.sleep(30)

    plugin = host(Slow, timeout=0.05)
    chain = PluginChain([plugin])
    outcome = asyncio.run(chain.ws_open(chain.session(1)))
    assert outcome.aborted and outcome.error.kind == "timeout" and "0.05 s" in outcome.error.message
    assert outcome.actions is None
    assert plugin.stats.errors[("WS_OPEN", "timeout")] == 1


def test_a_timeout_error_raised_by_the_handler_itself_is_a_plain_error():
    class P(Plugin):
        @on("HTTP_RESPONSE")
        async def res(self, ctx, res):
            raise TimeoutError("my own")

    chain = PluginChain([host(P)])
    outcome = asyncio.run(chain.http_response(chain.session(1), Response(200, [])))
    assert outcome.error.kind == "error" and "my own" in outcome.error.message


def test_cancellation_propagates():
    class P(Plugin):
        @on("HTTP_REQUEST")
        async def req(self, ctx, req):
            raise asyncio.CancelledError()

    chain = PluginChain([host(P)])
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(chain.http_request(chain.session(1), Request("GET", "/", [])))


# -- loading ----------------------------------------------------------------------------------

def test_route_example_loads_and_works():
    plugin, = load_plugin(str(FIXTURES / "route.py"))
    assert (plugin.name, plugin.priority, plugin.on_error) == ("Route", 100, "abort")
    chain = PluginChain([plugin])
    session = chain.session(1)
    outcome = asyncio.run(chain.http_request(session, Request("GET", "/chat/1", [])))
    assert outcome.actions.pool == "chat"
    assert chain.ws_message(session, "client", 1, b"a forbidden word").verdict == close(1008, "policy")
    assert chain.ws_message(session, "server", 1, b"a forbidden word") is None


def test_two_plugin_classes_setup_and_options():
    store = SharedStore()
    auth, audit = load_plugin(str(FIXTURES / "two_plugins.py"), options={"token": "t0k"}, shared=store)
    assert (auth.name, auth.priority, audit.name, audit.on_error) == ("auth", 10, "audit", "continue")
    assert auth.instance.options["token"] == "t0k" and auth.instance.token == "t0k"
    assert auth.instance.shared is store and audit.instance.shared is store
    chain = PluginChain([audit, auth])
    session = chain.session(1)
    outcome = asyncio.run(chain.http_request(session, Request("GET", "/", [])))
    assert outcome.verdict == respond(401, b"unauthorized", {"WWW-Authenticate": "Bearer"})
    ok = asyncio.run(chain.http_request(session, Request("GET", "/", [("Authorization", "Bearer t0k")])))
    assert ok is None
    chain.client_closed(session)
    assert audit.stats.metrics["sessions"] == 1


@pytest.mark.parametrize("name, line, message", [
    ("import_error.py", 3, "ModuleNotFoundError: No module named 'a_module_that_does_not_exist_anywhere'"),
    ("syntax_error.py", 6, "SyntaxError: expected ':'"),
])
def test_load_errors_carry_file_and_line(name, line, message):
    path = str(FIXTURES / name)
    with pytest.raises(PluginLoadError) as info:
        load_plugin(path)
    assert (info.value.path, info.value.line, info.value.message) == (path, line, message)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_error_in_setup_points_at_the_line(tmp_path):
    path = write(tmp_path, """\
        from wsproxy.plugin import Plugin, on

        class P(Plugin):
            def setup(self):
                self.limit = int(self.options["limit"])

            @on("WS_FRAME")
            def f(self, ctx, f):
                pass
    """)
    with pytest.raises(PluginLoadError, match=r"plug\.py:5: P: KeyError: 'limit'") as info:
        load_plugin(path)
    assert info.value.line == 5


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "defines no Plugin subclass"),
    ("from wsproxy.plugin import Plugin\nclass P(Plugin):\n    pass\n", "has no @on(...) handlers"),
    ("from wsproxy.plugin import Plugin, on\nclass P(Plugin):\n    priority = 5000\n    @on('WS_FRAME')\n    def f(self, ctx, f): pass\n",
     "priority must be an integer 0..1000"),
    ("from wsproxy.plugin import Plugin, on\nclass P(Plugin):\n    on_error = 'ignore'\n    @on('WS_FRAME')\n    def f(self, ctx, f): pass\n",
     "on_error must be"),
    ("from wsproxy.plugin import Plugin, on\nclass P(Plugin):\n    @on('WS_FRAME', dir='up')\n    def f(self, ctx, f): pass\n",
     'dir must be "client" or "server"'),
])
def test_bad_plugin_files(tmp_path, source, message):
    with pytest.raises(PluginLoadError, match=re.escape(message)):
        load_plugin(write(tmp_path, source))


def test_only_classes_defined_in_the_file_count(tmp_path):
    write(tmp_path, """\
        from wsproxy.plugin import Plugin, on
        class Base(Plugin):
            @on("WS_FRAME")
            def f(self, ctx, f):
                pass
    """, name="base_mod.py")
    path = write(tmp_path, """\
        import sys
        sys.path.insert(0, %r)
        from base_mod import Base
        from wsproxy.plugin import on

        class Child(Base):
            @on("WS_MESSAGE")
            def m(self, ctx, m):
                pass
    """ % str(tmp_path), name="child.py")
    try:
        plugins = load_plugin(path)
    finally:
        import sys
        sys.path.remove(str(tmp_path))
        sys.modules.pop("base_mod", None)
    assert [p.name for p in plugins] == ["Child"]
    assert [s.event for s in plugins[0].subscriptions] == ["WS_FRAME", "WS_MESSAGE"]  # inherited first


def test_the_same_file_loads_twice_independently(tmp_path):
    path = write(tmp_path, """\
        from wsproxy.plugin import Plugin, on
        COUNT = []
        class P(Plugin):
            @on("WS_FRAME")
            def f(self, ctx, f):
                COUNT.append(1)
    """)
    first, = load_python_plugins(path)
    second, = load_python_plugins(path)
    assert type(first.instance) is not type(second.instance)
