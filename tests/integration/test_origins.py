"""allowed_origins on a route against a running proxy (cross-site WebSocket hijacking):
exact and wildcard entries, case, ports, "null", and a handshake without Origin. A refused
handshake gets 403, one log line and ``wsproxy_rejections_total{reason="origin"}``, and never
reaches the member; other routes and other clients go on being served."""

from __future__ import annotations

import pytest

from .support import (HOST, connect, port_open, read_response, rejection_deltas, rejections, site_conf,
                      start_member, start_proxy, wait_until, ws_handshake_request, ws_key)

ALLOWED = ["https://app.example.com", "https://*.example.org", "http://localhost:8080", "null"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(proxy, member, admin port): /live/ checks ALLOWED, /other/ has no policy."""
    tmp = tmp_path_factory.mktemp("origins")
    member = start_member("ws_echo.py", "w", tmp, record=True)
    conf = site_conf({"ws": [member.addr]}, server={"admin": f"{HOST}:$PORT9"}, routes=[
        {"path_prefix": "/live/", "pool": "ws", "allowed_origins": ALLOWED},
        {"pool": "ws"},
    ])
    p = start_proxy(conf, tmp)
    admin = int(p.config["server"]["admin"].rsplit(":", 1)[1])
    try:
        assert wait_until(lambda: port_open(admin), 10), p.stderr_text()[-3000:]
        yield p, member, admin
    finally:
        p.stop()
        member.kill()


def handshake(port: int, path: str, origin: str | None) -> tuple[int, str, dict]:
    """(status, our client address, lowercased headers) of one raw WebSocket handshake."""
    extra = [("Origin", origin)] if origin is not None else []
    with connect(port) as s:
        client = "%s:%d" % s.getsockname()[:2]
        s.sendall(ws_handshake_request(path, key=ws_key(), extra=extra))
        with s.makefile("rb") as f:
            r = read_response(f, head_request=True)
    return r.status, client, {k.lower(): v for k, v in r.headers}


@pytest.mark.parametrize(("origin", "status"), [
    ("https://app.example.com", 101),
    ("HTTPS://App.Example.COM", 101),  # scheme and host compare case-insensitively
    ("https://app.example.com:443", 101),  # the default port, written out
    ("https://a.example.org", 101),  # wildcard: one label
    ("https://a.b.example.org", 101),  # wildcard: several labels
    ("http://localhost:8080", 101),
    ("null", 101),  # only because "null" is listed
    (None, 101),  # no Origin: not a browser (README, Security)
    ("https://evil.example", 403),
    ("http://app.example.com", 403),  # another scheme
    ("https://app.example.com:8443", 403),  # another port
    ("https://example.org", 403),  # the wildcard needs a label before it
    ("https://app.example.com.evil.example", 403),
    ("http://localhost", 403),  # port 80, not 8080
    ("https://app.example.com/path", 403),  # not a serialized origin
], ids=lambda v: repr(v))
def test_origin_policy(site, origin, status):
    p, member, admin = site
    before = rejections(admin)
    path = f"/live/{ws_key()[:8]}"
    got, client, headers = handshake(p.port, path, origin)
    assert got == status
    deltas = rejection_deltas(rejections(admin), before)
    if status == 101:
        assert deltas == {}
        assert member.wait_record(lambda r: r["path"] == path, timeout=5) is not None
        return
    assert headers.get("connection", "").lower() == "close"
    assert deltas == {("public", "origin"): 1}
    line = p.wait_log(lambda r: r.get("rejection") and r.get("client") == client)
    assert line is not None
    assert (line["msg"], line["listener"], line["rejection"], line["status"]) == (
        "request refused", "public", "origin", 403)
    assert repr(origin) in line["reason"] and "public.routes[0]" in line["reason"]
    # the member never saw it; the same Origin is fine on a route without a policy
    assert not [r for r in member.records() if r["path"] == path]
    assert handshake(p.port, "/other/x", origin)[0] == 101
