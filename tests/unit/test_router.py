"""Router: key kinds, precedence, wildcard hosts, ports, case and IPv6."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wsproxy.routing import Router, request_host


@dataclass(frozen=True)
class Route:
    """Stand-in with RouteConfig's routing fields (the real class may not exist yet)."""

    index: int
    pool: str
    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None


def routes(*specs: dict) -> tuple[Route, ...]:
    return tuple(Route(index=i, **spec) for i, spec in enumerate(specs))


def pool_for(router: Router, host: str | None, path: str) -> str | None:
    route = router.match(host, path)
    return None if route is None else route.pool


# -- key kinds -------------------------------------------------------------------------


def test_exact_path_matches_only_itself():
    router = Router(routes({"path": "/exact", "pool": "p"}))
    assert pool_for(router, "h", "/exact") == "p"
    assert pool_for(router, "h", "/exact/") is None
    assert pool_for(router, "h", "/exactly") is None
    assert pool_for(router, "h", "/EXACT") is None  # paths are case-sensitive


def test_path_prefix_is_a_plain_string_prefix():
    router = Router(routes({"path_prefix": "/live/", "pool": "live"}, {"path_prefix": "/api", "pool": "api"}))
    assert pool_for(router, None, "/live/") == "live"
    assert pool_for(router, None, "/live/room/1") == "live"
    assert pool_for(router, None, "/live") is None
    assert pool_for(router, None, "/api") == "api"
    assert pool_for(router, None, "/apiary") == "api"  # documented: no segment logic


def test_exact_host():
    router = Router(routes({"host": "chat.example.com", "pool": "chat"}))
    assert pool_for(router, "chat.example.com", "/") == "chat"
    assert pool_for(router, "example.com", "/") is None
    assert pool_for(router, "xchat.example.com", "/") is None
    assert pool_for(router, None, "/") is None  # no Host never matches a host route


def test_catch_all_matches_anything():
    router = Router(routes({"pool": "web"}))
    assert pool_for(router, None, "/") == "web"
    assert pool_for(router, "any.host:1", "/x/y?z") == "web"
    assert pool_for(router, "", "*") == "web"


def test_all_present_keys_must_match():
    router = Router(routes({"host": "a.com", "path_prefix": "/ws/", "pool": "both"}, {"pool": "rest"}))
    assert pool_for(router, "a.com", "/ws/x") == "both"
    assert pool_for(router, "b.com", "/ws/x") == "rest"
    assert pool_for(router, "a.com", "/http") == "rest"

    router = Router(routes({"host": "a.com", "path": "/x", "path_prefix": "/x", "pool": "all3"}))
    assert pool_for(router, "a.com", "/x") == "all3"
    assert pool_for(router, "a.com", "/xy") is None


def test_no_routes_matches_nothing():
    assert Router(()).match("a.com", "/") is None


# -- precedence ------------------------------------------------------------------------


def test_first_match_wins_in_config_order():
    table = routes(
        {"path_prefix": "/socket.io/", "pool": "socketio"},
        {"path_prefix": "/live/", "pool": "chat"},
        {"host": "chat.example.com", "pool": "chat-host"},
        {"path": "/exact", "pool": "exact"},
        {"pool": "web"},
        {"path": "/never", "pool": "shadowed"},
    )
    router = Router(table)
    assert pool_for(router, "chat.example.com", "/socket.io/?EIO=4") == "socketio"
    assert pool_for(router, "chat.example.com", "/live/1") == "chat"
    assert pool_for(router, "chat.example.com", "/exact") == "chat-host"
    assert pool_for(router, "other.com", "/exact") == "exact"
    assert pool_for(router, "other.com", "/never") == "web"  # after the catch-all: unreachable
    assert router.match("x", "/socket.io/") is table[0]  # returns the route object itself


def test_more_specific_later_route_does_not_win():
    router = Router(routes({"path_prefix": "/", "pool": "broad"}, {"path": "/special", "pool": "narrow"}))
    assert pool_for(router, None, "/special") == "broad"


# -- wildcard hosts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, matches",
    [
        ("a.example.com", True),
        ("A.Example.COM", True),
        ("a.b.example.com", True),  # one or more labels
        ("a.example.com:8443", True),
        ("example.com", False),  # not the apex
        (".example.com", False),  # empty label
        ("a..example.com", False),
        ("badexample.com", False),  # suffix must start at a label boundary
        ("a.example.com.evil.org", False),
        ("example.org", False),
        (None, False),
    ],
)
def test_wildcard_host(host, matches):
    router = Router(routes({"host": "*.example.com", "pool": "wild"}))
    assert (pool_for(router, host, "/") == "wild") is matches


def test_wildcard_and_exact_host_by_order():
    router = Router(routes({"host": "api.example.com", "pool": "api"}, {"host": "*.example.com", "pool": "wild"}, {"host": "example.com", "pool": "apex"}))
    assert pool_for(router, "api.example.com", "/") == "api"
    assert pool_for(router, "www.example.com", "/") == "wild"
    assert pool_for(router, "example.com", "/") == "apex"


# -- ports, case, IPv6, trailing dot ----------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["example.com", "Example.com:8080", "EXAMPLE.COM", "example.com:", "example.com.", "Example.Com.:443", " example.com "],
)
def test_host_ignores_port_case_and_trailing_dot(host):
    router = Router(routes({"host": "Example.COM", "pool": "p"}))
    assert pool_for(router, host, "/") == "p"


@pytest.mark.parametrize("route_host", ["::1", "[::1]"])
@pytest.mark.parametrize("host, matches", [("[::1]:8080", True), ("[::1]", True), ("[::2]:8080", False), ("::1", True)])
def test_ipv6_hosts(route_host, host, matches):
    router = Router(routes({"host": route_host, "pool": "v6"}))
    assert (pool_for(router, host, "/") == "v6") is matches


def test_ipv6_case_insensitive():
    router = Router(routes({"host": "[2001:DB8::1]", "pool": "v6"}))
    assert pool_for(router, "[2001:db8::1]:443", "/") == "v6"


def test_ipv4_with_port():
    router = Router(routes({"host": "127.0.0.1", "pool": "v4"}))
    assert pool_for(router, "127.0.0.1:8080", "/") == "v4"
    assert pool_for(router, "127.0.0.2:8080", "/") is None


@pytest.mark.parametrize(
    "raw, normalized",
    [
        (None, None),
        ("", None),
        ("Example.com:8080", "example.com"),
        ("[::1]:8080", "::1"),
        ("[FE80::1]", "fe80::1"),
        ("[::1", "[::1"),  # broken literal kept whole: matches nothing sensible
        ("::1", "::1"),  # bare IPv6 (invalid in Host) is not split at a colon
        ("host.", "host"),
    ],
)
def test_request_host_normalization(raw, normalized):
    assert request_host(raw) == normalized


# -- paths are raw -------------------------------------------------------------------------


def test_paths_are_not_normalized():
    router = Router(routes({"path_prefix": "/admin/", "pool": "admin"}, {"pool": "web"}))
    assert pool_for(router, None, "/admin/x") == "admin"
    assert pool_for(router, None, "/live/../admin/x") == "web"
    assert pool_for(router, None, "/%61dmin/x") == "web"
    assert pool_for(router, None, "//admin/x") == "web"


def test_query_is_ignored_if_passed():
    router = Router(routes({"path": "/exact", "pool": "p"}))
    assert pool_for(router, None, "/exact?x=1") == "p"


def test_router_is_immutable_snapshot():
    source = [Route(index=0, pool="a", path="/a")]
    router = Router(source)
    source.append(Route(index=1, pool="b"))
    assert router.match(None, "/b") is None
    assert len(router) == 1
    assert isinstance(router.routes, tuple)


def test_with_real_route_config():
    schema = pytest.importorskip("wsproxy.config.schema")
    table = (
        schema.RouteConfig(index=0, pool="chat", host="*.example.com", path_prefix="/live/"),
        schema.RouteConfig(index=1, pool="web"),
    )
    router = Router(table)
    assert router.match("Chat.Example.com:443", "/live/1") is table[0]
    assert router.match("example.com", "/live/1") is table[1]
