"""plugins/route_by_path.{lua,py}: the pool from the longest path prefix, else from the Host."""

import pytest

PLUGIN = "route_by_path"
OPTIONS = {
    "paths": {"/chat/": "chat", "/chat/admin/": "chat-admin", "/api": "api"},
    "hosts": {"Admin.Example.com": "admin", "ws.example.com": "ws"},
}


def pool(outcome):
    return outcome.actions.pool if outcome is not None and outcome.actions is not None else None


@pytest.mark.parametrize("target, host, expected", [
    ("/chat/room/1", "app.example.com", "chat"),
    ("/chat/admin/users", "app.example.com", "chat-admin"),  # the longest prefix wins
    ("/chat", "app.example.com", None),                       # "/chat/" is the prefix
    ("/apiv2/x", "app.example.com", "api"),                   # a plain prefix, not a path segment
    ("/other?to=/chat/", "app.example.com", None),            # the query is not the path
    ("/other", "admin.example.com", "admin"),                 # host rules are case-insensitive
    ("/other", "ADMIN.example.com:8443", "admin"),            # req.host: lower case, no port
    ("/chat/x", "admin.example.com", "chat"),                 # a path rule wins over a host rule
    ("/other", "app.example.com", None),                      # no rule: the route's own pool
    ("/other", None, None),                                   # no Host header at all
])
def test_route_by_path_runtime_routes(example, target, host, expected):
    ex = example(OPTIONS)
    outcome, _ = ex.request(ex.session(), target, host=host)
    assert pool(outcome) == expected
    if outcome is not None:
        assert outcome.verdict is None and outcome.actions.member is None and outcome.actions.hash_key is None


def test_route_by_path_runtime_websocket_upgrade_is_routed_like_any_request(example):
    ex = example(OPTIONS)
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    outcome, req = ex.request(ex.session(), "/chat/ws", upgrade, host="ws.example.com")
    assert pool(outcome) == "chat"
    assert not req.edited


def test_route_by_path_runtime_each_request_of_a_keepalive_connection_is_routed(example):
    ex = example(OPTIONS)
    session = ex.session()
    assert pool(ex.request(session, "/chat/a")[0]) == "chat"
    assert pool(ex.request(session, "/api/b")[0]) == "api"
    assert pool(ex.request(session, "/nothing")[0]) is None


def test_route_by_path_runtime_without_options_routes_nothing(example):
    ex = example()
    assert ex.request(ex.session(), "/chat/room", host="admin.example.com")[0] is None


def test_route_by_path_doc_snippet_loads(check_docs):
    check_docs()
