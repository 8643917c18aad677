"""redirect_https (issue #7): a plain listener answers every request with 308 to https."""

from __future__ import annotations

from .support import raw_request, ws_handshake_request

CONF = """
[listeners.plain]
bind = "127.0.0.1:$PORT"
redirect_https = "https://example.com"
routes = [{ pool = "web" }]
[pools.web]
members = ["127.0.0.1:9"]
"""


def test_every_request_gets_308_to_the_same_path_and_query(proxy):
    p = proxy(CONF)
    get = raw_request(p.port, b"GET /live/room?id=7&x=%20 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert get.status == 308
    assert get.header("Location") == "https://example.com/live/room?id=7&x=%20"
    assert get.header("Connection") == "close"
    post = raw_request(p.port, b"POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc")
    assert post.status == 308 and post.header("Location") == "https://example.com/api"  # 308 keeps POST
    upgrade = raw_request(p.port, ws_handshake_request("/ws?t=1", host="example.com"))
    assert upgrade.status == 308 and upgrade.header("Location") == "https://example.com/ws?t=1"
    root = raw_request(p.port, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert root.header("Location") == "https://example.com/"
    logs = p.access_logs("http")
    assert len(logs) == 4 and {l["status"] for l in logs} == {308}  # the member (port 9) never asked
    assert all(l["reason"] == "redirect_https" for l in logs)


def test_redirect_base_with_a_path_prefix(proxy):
    p = proxy(CONF.replace('"https://example.com"', '"https://example.com:8443/app/"'))
    got = raw_request(p.port, b"GET /x?y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert got.status == 308 and got.header("Location") == "https://example.com:8443/app/x?y"
