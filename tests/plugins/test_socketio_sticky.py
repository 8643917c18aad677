"""plugins/socketio_sticky.{lua,py}: Engine.IO sid -> member, learned from the handshake's
Set-Cookie and applied to the session's later polls and its WebSocket upgrade.

The proxy sets ``session.member`` once it has chosen (and connected to) a member; these
tests do that by hand before HTTP_RESPONSE, as the proxy will.
"""

import pytest

PLUGIN = "socketio_sticky"
SID = "Xb2Yk3mQ0aBc-DeF_gAAAB"
MEMBER = "10.0.0.2:9001"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling&t=OxQ2b1c"
POLL = f"/socket.io/?EIO=4&transport=polling&t=OxQ2b2d&sid={SID}"
UPGRADE = f"/socket.io/?EIO=4&transport=websocket&sid={SID}"
WS_HEADERS = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


def handshake_headers(sid=SID, cookie_name="io"):
    # what python-engineio sends with AsyncServer(cookie="io")
    return [("Content-Type", "text/plain; charset=UTF-8"),
            ("Set-Cookie", f"{cookie_name}={sid}; path=/; SameSite=Lax"),
            ("Content-Length", "118")]


def handshake(ex, member=MEMBER, status=200, headers=None, target=HANDSHAKE):
    """A handshake on a new connection: the request is balanced normally, then answered by ``member``."""
    session = ex.session()
    outcome, _ = ex.request(session, target)
    assert outcome is None  # a new session: no routing decision
    session.member = member  # the proxy records the member it chose
    outcome, res = ex.response(session, status, handshake_headers() if headers is None else headers)
    assert outcome is None and not res.edited  # the plugin only reads the response
    return session


def routed_to(outcome):
    if outcome is None or outcome.actions is None:
        return None
    assert outcome.actions.strict is False  # a member that is gone is balanced normally
    return outcome.actions.member


def test_socketio_sticky_runtime_later_polls_and_the_upgrade_reach_the_handshake_member(example):
    ex = example()
    handshake(ex)
    assert ex.shared.get(f"sio:{SID}") == MEMBER
    assert routed_to(ex.request(ex.session(), POLL)[0]) == MEMBER
    assert routed_to(ex.request(ex.session(), POLL, method="POST")[0]) == MEMBER
    assert routed_to(ex.request(ex.session(), UPGRADE, WS_HEADERS)[0]) == MEMBER


def test_socketio_sticky_runtime_sessions_map_to_their_own_members(example):
    ex = example()
    handshake(ex, "10.0.0.1:9001", headers=handshake_headers("sidA"))
    handshake(ex, "10.0.0.2:9001", headers=handshake_headers("sidB"))
    assert routed_to(ex.request(ex.session(), "/socket.io/?EIO=4&transport=polling&sid=sidA")[0]) == "10.0.0.1:9001"
    assert routed_to(ex.request(ex.session(), "/socket.io/?EIO=4&transport=polling&sid=sidB")[0]) == "10.0.0.2:9001"


def test_socketio_sticky_runtime_unknown_sid_is_balanced_normally(example):
    ex = example()
    handshake(ex)
    assert ex.request(ex.session(), "/socket.io/?EIO=4&transport=polling&sid=never-seen")[0] is None
    assert ex.request(ex.session(), "/socket.io/?EIO=4&transport=polling&sid=")[0] is None


def test_socketio_sticky_runtime_entries_expire_after_ttl_without_requests(example):
    ex = example({"ttl": 60})
    clock = ex.clock
    handshake(ex)
    for _ in range(5):  # each request of the session renews the entry
        clock.now += 59
        assert routed_to(ex.request(ex.session(), POLL)[0]) == MEMBER
    clock.now += 61
    assert ex.request(ex.session(), POLL)[0] is None
    assert ex.shared.get(f"sio:{SID}") is None


def test_socketio_sticky_runtime_default_ttl_is_120_s(example):
    ex = example()
    handshake(ex)
    assert ex.shared.ttl(f"sio:{SID}") == 120


@pytest.mark.parametrize("status, headers", [
    (200, [("Content-Type", "text/plain; charset=UTF-8")]),  # cookie option not set on the member
    (200, [("Set-Cookie", f"other={SID}; path=/")]),        # another cookie
    (200, [("Set-Cookie", f"ion={SID}; path=/")]),          # a longer name is another cookie
    (200, [("Set-Cookie", "io=; path=/")]),                 # an empty value
    (400, handshake_headers()),                              # the handshake failed
    (101, handshake_headers()),                              # a WebSocket-only session: no need
])
def test_socketio_sticky_runtime_learns_only_a_sid_cookie_on_a_200(example, status, headers):
    ex = example()
    handshake(ex, status=status, headers=headers)
    assert len(ex.shared) == 0


def test_socketio_sticky_runtime_learns_only_from_handshakes(example):
    ex = example()
    # a request that already carries a sid is not a handshake, whatever its response says
    session = ex.session()
    ex.request(session, "/socket.io/?EIO=4&transport=polling&sid=old")
    session.member = MEMBER
    ex.response(session, 200, handshake_headers("new"))
    # nor is a request outside the Engine.IO path
    session = ex.session()
    ex.request(session, "/login")
    session.member = MEMBER
    ex.response(session, 200, handshake_headers("new"))
    assert len(ex.shared) == 0


def test_socketio_sticky_runtime_keepalive_requests_are_judged_one_by_one(example):
    ex = example()
    session = ex.session()
    ex.request(session, "/app.js")                 # request 1: not Engine.IO
    session.member = "10.0.0.9:80"
    ex.response(session, 200, handshake_headers("not-a-session"))
    ex.request(session, HANDSHAKE)                 # request 2 on the same connection: a handshake
    session.member = MEMBER
    ex.response(session, 200, handshake_headers())
    ex.request(session, "/other")                  # request 3: not one any more
    ex.response(session, 200, handshake_headers("not-either"))
    assert len(ex.shared) == 1 and ex.shared.get(f"sio:{SID}") == MEMBER


def test_socketio_sticky_runtime_no_member_known_at_response_learns_nothing(example):
    ex = example()
    session = ex.session()
    ex.request(session, HANDSHAKE)
    assert ex.response(session, 200, handshake_headers())[0] is None  # session.member never set
    assert len(ex.shared) == 0


def test_socketio_sticky_runtime_options(example):
    ex = example({"path": "/rt/", "cookie": "rt.sid", "ttl": 30})
    handshake(ex, target="/rt/?EIO=4&transport=polling", headers=[("Set-Cookie", "rt.sid=s1; Path=/rt/")])
    handshake(ex, target="/rt/?EIO=4&transport=polling", headers=[("Set-Cookie", "rtXsid=s2; Path=/rt/")])
    assert ex.shared.ttl("sio:s1") == 30 and ex.shared.get("sio:s2") is None
    assert routed_to(ex.request(ex.session(), "/rt/?EIO=4&transport=websocket&sid=s1", WS_HEADERS)[0]) == MEMBER
    handshake(ex, target=HANDSHAKE)  # the default path is no longer watched
    assert ex.request(ex.session(), POLL)[0] is None


def test_socketio_sticky_runtime_sid_cookie_after_another_cookie(example):
    ex = example()
    handshake(ex, headers=[("Set-Cookie", "lang=en; path=/"), ("Set-Cookie", f"io={SID}; path=/; SameSite=Lax")])
    assert routed_to(ex.request(ex.session(), POLL)[0]) == MEMBER


def test_socketio_sticky_runtime_lua_and_python_share_the_map(load_example):
    # the two versions keep the same keys in `shared`, so either can take over from the other
    lua = load_example(PLUGIN, "lua")
    py = load_example(PLUGIN, "py", shared=lua.shared, clock=lua.clock)
    handshake(lua)
    assert routed_to(py.request(py.session(), POLL)[0]) == MEMBER
    handshake(py, "10.0.0.3:9001", headers=handshake_headers("other"))
    assert routed_to(lua.request(lua.session(), "/socket.io/?EIO=4&transport=polling&sid=other")[0]) == "10.0.0.3:9001"


def test_socketio_sticky_doc_snippet_loads(check_docs):
    check_docs()
