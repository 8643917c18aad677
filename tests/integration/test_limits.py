"""Listener limits against a running proxy: max_conns (HTTP, WebSocket, idle and tcp-mode
connections all count; a reload keeps the count), max_conns_per_ip (two clients as
127.0.0.1 and 127.0.0.2; with accept_proxy, the PROXY header's client), and
handshake_rate_per_ip (429 with Retry-After, then served after the refill; behind a trusted
proxy, per X-Forwarded-For client). Each refusal is checked for what the client sees, the
counter and the log line, and the proxy keeps serving everyone else meanwhile."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request

from .support import (HOST, connect, connect_from, port_open, raw_ws_connect, read_response, rejection_deltas,
                      rejections, site_conf, wait_until, ws_handshake_request, ws_key)
from .tcp_support import closed_within

OTHER_IP = "127.0.0.2"  # Linux routes all of 127/8 to the loopback device


def admin_of(p) -> int:
    """The admin port, once start_proxy's readiness probes are gone: the limits count every
    connection, and a probe still open would take a slot the test means to fill."""
    port = int(p.config["server"]["admin"].rsplit(":", 1)[1])
    assert wait_until(lambda: port_open(port), 10), p.stderr_text()[-3000:]
    assert wait_until(lambda: active_connections(port) == 0, 5), p.stderr_text()[-3000:]
    time.sleep(0.05)  # a session ends just before its connection is released
    return port


def active_connections(admin: int) -> float:
    """wsproxy_connections_active summed over the listeners."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{admin}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wsproxy_connections_active{"))


def with_admin(pools: dict, **kw) -> str:
    return site_conf(pools, server={"admin": f"{HOST}:$PORT9", **kw.pop("server", {})}, **kw)


def get_on(s, path: str = "/") -> int:
    """One keep-alive GET on an open connection; its status."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(s.makefile("rb")).status


def served(port: int, source: str = HOST) -> bool:
    """A new connection from ``source`` gets an answer to a GET."""
    try:
        with connect_from(source, port, timeout=5) as s:
            return get_on(s) == 200
    except (ConnectionError, OSError):
        return False


def refused_at_once(s) -> bool:
    """The proxy closed this fresh connection without a byte, within a second; a request
    sent on it is never answered."""
    with contextlib.suppress(OSError):
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    closed, took = closed_within(s, 3)
    return closed and took < 1.0


def refusal_lines(p, reason: str) -> list[dict]:
    return [r for r in p.logs() if r.get("rejection") == reason and r.get("msg", "").startswith("connection refused")]


# --- max_conns ------------------------------------------------------------------------------------

def test_max_conns_counts_every_kind_of_connection(members, proxy):
    web, ws = members.http("a"), members.ws("w")
    p = proxy(with_admin({"web": [web.addr], "ws": [ws.addr]},
                         routes=[{"path_prefix": "/ws/", "pool": "ws"}, {"pool": "web"}],
                         listener={"max_conns": 3}))
    admin = admin_of(p)
    before = rejections(admin)
    ws_sock, _ = raw_ws_connect(p.port, "/ws/echo")  # a WebSocket
    http_sock = connect(p.port)
    assert get_on(http_sock) == 200  # a keep-alive HTTP connection
    idle_sock = connect(p.port)  # a connection that has sent nothing yet
    try:
        time.sleep(0.2)  # the proxy has accepted the idle one too
        for _ in range(2):
            with connect(p.port) as s:
                assert refused_at_once(s)
        assert rejection_deltas(rejections(admin), before) == {("public", "max_conns"): 2}
        lines = refusal_lines(p, "max_conns")
        assert len(lines) == 1, lines  # at most one line per second while saturated
        assert lines[0]["listener"] == "public" and lines[0]["limit"] == 3 and lines[0]["refused"] == 1
        # the connections already open are still served
        assert get_on(http_sock) == 200
        idle_sock.close()  # a slot is freed...
        assert wait_until(lambda: served(p.port), 5)  # ...and taken again
    finally:
        for s in (ws_sock, http_sock, idle_sock):
            s.close()


def test_max_conns_on_a_tcp_listener(members, proxy):
    web, ws = members.http("a"), members.ws("w")  # the tcp listener relays to the ws member
    conf = with_admin({"web": [web.addr], "ws": [ws.addr]}, extra_listeners={
        "raw": {"bind": f"{HOST}:$PORT2", "mode": "tcp", "pool": "ws", "max_conns": 1}})
    p = proxy(conf)
    admin = admin_of(p)
    # (start_proxy's readiness probe may hold the one slot for a moment: retry until it is free)
    first = wait_until(lambda: _relayed(p.ports["raw"]), 5)
    assert first is not None
    with first:
        before = rejections(admin)
        with connect(p.ports["raw"]) as second:
            assert refused_at_once(second)
        assert rejection_deltas(rejections(admin), before) == {("raw", "max_conns"): 1}
        assert served(p.port)  # the http listener has its own limit
    second = wait_until(lambda: _relayed(p.ports["raw"]), 5)  # the slot is free again
    assert second is not None
    second.close()


def _relayed(port: int):
    """A connection through the tcp listener that reached the member (a WebSocket
    handshake relayed as bytes gets its 101), or None if the proxy closed it."""
    s = connect(port)
    try:
        s.sendall(ws_handshake_request("/", key=ws_key()))
        if s.recv(12).startswith(b"HTTP/1.1 101"):
            return s
    except OSError:  # refused: the slot is taken
        pass
    s.close()
    return None


def test_reload_keeps_the_live_count(members, proxy):
    ws = members.ws("w")
    p = proxy(with_admin({"ws": [ws.addr]}, listener={"max_conns": 2}))
    admin = admin_of(p)
    held = [raw_ws_connect(p.port, "/echo")[0] for _ in range(2)]
    try:
        with connect(p.port) as s:
            assert refused_at_once(s)
        # A reload to the same limits: the first generation's WebSockets still count.
        _reload(p, p.conf_path.read_text(), generation=2)
        with connect(p.port) as s:
            assert refused_at_once(s)
        # A reload that raises the limit: one more, and only one.
        _reload(p, p.conf_path.read_text().replace("max_conns = 2", "max_conns = 3"), generation=3)
        held.append(raw_ws_connect(p.port, "/echo")[0])
        with connect(p.port) as s:
            assert refused_at_once(s)
        assert rejections(admin)[("public", "max_conns")] == 3
    finally:
        for s in held:
            s.close()


def _reload(p, text: str, generation: int) -> None:
    tmp = p.conf_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p.conf_path)
    os.kill(p.proc.pid, signal.SIGHUP)
    line = p.wait_log(lambda r: r.get("msg", "").startswith("reloaded") and r.get("generation") == generation, 20)
    assert line is not None, p.stderr_text()[-3000:]


# --- max_conns_per_ip -----------------------------------------------------------------------------

def test_max_conns_per_ip_limits_one_client_and_serves_the_others(members, proxy):
    web = members.http("a")
    p = proxy(with_admin({"web": [web.addr]}, listener={"max_conns_per_ip": 2}))
    admin = admin_of(p)
    before = rejections(admin)
    mine = [connect_from(HOST, p.port) for _ in range(2)]
    try:
        assert [get_on(s) for s in mine] == [200, 200]
        with connect_from(HOST, p.port) as third:
            client = "%s:%d" % third.getsockname()[:2]
            assert refused_at_once(third)
        # Another client is served while this one is at its limit, even several times over.
        others = [connect_from(OTHER_IP, p.port) for _ in range(2)]
        assert [get_on(s) for s in others] == [200, 200]
        for s in others:
            s.close()
        assert rejection_deltas(rejections(admin), before) == {("public", "ip_conns"): 1}
        lines = refusal_lines(p, "ip_conns")
        assert len(lines) == 1 and lines[0]["client"] == client and lines[0]["limit"] == 2
        mine.pop().close()  # one of its connections ends: it may open another
        assert wait_until(lambda: served(p.port), 5)
    finally:
        for s in mine:
            s.close()


def test_max_conns_per_ip_counts_the_proxy_header_client(members, proxy):
    web = members.http("a")
    p = proxy(with_admin({"web": [web.addr]}, listener={
        "max_conns_per_ip": 1, "accept_proxy": True, "trusted_proxies": [f"{HOST}/32"]}))
    admin = admin_of(p)
    before = rejections(admin)

    def via_balancer(client_ip: str, port: int):
        s = connect(p.port)
        s.sendall(f"PROXY TCP4 {client_ip} {HOST} {port} 80\r\n".encode())
        return s

    first = via_balancer("192.0.2.1", 5000)
    try:
        assert get_on(first) == 200
        with via_balancer("192.0.2.1", 5001) as again:  # the same client: over its limit
            assert refused_at_once(again)
        with via_balancer("192.0.2.2", 5002) as other:  # another client through the same balancer
            assert get_on(other) == 200
        assert served(p.port, OTHER_IP)  # a direct client (not a trusted peer)
        assert rejection_deltas(rejections(admin), before) == {("public", "ip_conns"): 1}
        lines = refusal_lines(p, "ip_conns")
        assert len(lines) == 1 and lines[0]["client"] == "192.0.2.1:5001"
    finally:
        first.close()


# --- handshake_rate_per_ip ------------------------------------------------------------------------

def ws_handshake(source: str, port: int, extra=()) -> tuple[int, dict]:
    """(status, lowercased headers) of one raw WebSocket handshake from ``source``; the
    connection is closed right after the answer's head."""
    with connect_from(source, port) as s:
        s.sendall(ws_handshake_request("/echo", key=ws_key(), extra=list(extra)))
        r = read_response(s.makefile("rb"), head_request=True)
        headers = {k.lower(): v for k, v in r.headers}
        if r.status != 101:
            closed, _ = closed_within(s, 3)
            headers["(closed)"] = closed
    return r.status, headers


def test_handshake_rate_429_then_served_after_the_refill(members, proxy):
    ws, web = members.ws("w"), members.http("a")
    p = proxy(with_admin({"ws": [ws.addr], "web": [web.addr]},
                         routes=[{"path": "/echo", "pool": "ws"}, {"pool": "web"}],
                         listener={"handshake_rate_per_ip": {"rate": 0.5, "burst": 2}}))
    admin = admin_of(p)
    before = rejections(admin)
    assert [ws_handshake(HOST, p.port)[0] for _ in range(2)] == [101, 101]  # the burst
    status, headers = ws_handshake(HOST, p.port)
    refused_at = time.monotonic()
    assert status == 429
    assert headers["retry-after"] in ("1", "2")  # a token every 2 s
    assert headers["connection"].lower() == "close" and headers["(closed)"]
    # Everyone else is served meanwhile: another IP's handshakes, and this IP's plain requests.
    assert ws_handshake(OTHER_IP, p.port)[0] == 101
    assert served(p.port, HOST)
    assert rejection_deltas(rejections(admin), before) == {("public", "handshake_rate"): 1}
    line = p.wait_log(lambda r: r.get("rejection") == "handshake_rate")
    assert (line["msg"], line["listener"], line["status"]) == ("request refused", "public", 429)
    assert line["client"].startswith(f"{HOST}:")
    # After Retry-After, a token is back.
    time.sleep(max(0.0, refused_at + int(headers["retry-after"]) + 0.1 - time.monotonic()))
    assert ws_handshake(HOST, p.port)[0] == 101


def test_handshake_rate_behind_a_trusted_proxy_counts_the_forwarded_client(members, proxy):
    ws = members.ws("w")
    p = proxy(with_admin({"ws": [ws.addr]}, listener={
        "handshake_rate_per_ip": {"rate": 0.1, "burst": 1}, "trusted_proxies": [f"{HOST}/32"]}))
    admin = admin_of(p)
    before = rejections(admin)
    xff = ("X-Forwarded-For", "198.51.100.9, 203.0.113.5")  # the front appended 203.0.113.5
    assert ws_handshake(HOST, p.port, [xff])[0] == 101
    assert ws_handshake(HOST, p.port, [xff])[0] == 429
    assert ws_handshake(HOST, p.port, [("X-Forwarded-For", "203.0.113.6")])[0] == 101
    # the front's own handshakes (no X-Forwarded-For) are not limited per IP
    assert [ws_handshake(HOST, p.port)[0] for _ in range(3)] == [101, 101, 101]
    # a direct client is limited by its own address
    assert [ws_handshake(OTHER_IP, p.port)[0] for _ in range(2)] == [101, 429]
    assert rejection_deltas(rejections(admin), before) == {("public", "handshake_rate"): 2}
