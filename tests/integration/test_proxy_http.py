"""Plain HTTP through the proxy: bodies, keep-alive, pipelining, routing, forwarding
headers, error statuses. Black box: the proxy runs as ``python -m wsproxy``."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time

import pytest

from .support import (
    HOST,
    closed_port,
    connect,
    full_duplex_request,
    raw_request,
    read_response,
    site_conf,
)

MiB = 1024 * 1024


@pytest.fixture
def web(members, proxy):
    """One aiohttp member "a" behind a catch-all route."""
    m = members.http("a")
    p = proxy(site_conf({"web": [m.addr]}, listener={"head_timeout": "1s"}))
    return p, m


def http_conn(port: int, timeout: float = 30.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(HOST, port, timeout=timeout)


def get(port: int, path: str, headers: dict | None = None, timeout: float = 30.0):
    c = http_conn(port, timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def member_seen(member) -> list[list[str]]:
    """What the member itself saw (asked directly, not through the proxy)."""
    return json.loads(get(member.port, "/seen")[2])


# ----------------------------------------------------------------------------- bodies

@pytest.mark.parametrize("size", [0, 1, 10 * MiB], ids=["0B", "1B", "10MiB"])
def test_post_content_length_echo(web, size):
    p, _ = web
    body = os.urandom(size)
    head = (f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    parts = [body[i:i + 65536] for i in range(0, size, 65536)]
    r = full_duplex_request(p.port, head, parts)
    assert r.status == 200
    assert r.header("X-Member") == "a"
    assert int(r.header("Content-Length")) == size
    assert len(r.body) == size and r.body == body


@pytest.mark.parametrize("size", [0, 1, 10 * MiB], ids=["0B", "1B", "10MiB"])
def test_get_response_bodies(web, size):
    p, _ = web
    status, headers, data = get(p.port, f"/bytes/{size}")
    assert status == 200
    pattern = b"abcdefghijklmnopqrstuvwxyz"
    assert data == (pattern * (size // 26 + 1))[:size]


def test_post_chunked_echo(web):
    p, _ = web
    chunks = [b"x", os.urandom(1000), os.urandom(100_000), os.urandom(3 * MiB), b"end"]
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
    r = full_duplex_request(p.port, head, parts)
    assert r.status == 200
    assert r.body == b"".join(chunks)
    # the member answered chunked because the request it got was chunked
    assert "chunked" in (r.header("Transfer-Encoding") or "").lower()


def test_post_chunked_raw_split_writes_with_extensions_and_trailer(web):
    """Chunk sizes, extensions and a trailer, written in small pieces."""
    p, _ = web
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = b"5;name=val\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: 1\r\n\r\n"
    with connect(p.port) as s:
        s.sendall(head)
        for i in range(0, len(body), 7):
            s.sendall(body[i:i + 7])
            time.sleep(0.01)
        with s.makefile("rb") as f:
            r = read_response(f)
    assert r.status == 200
    assert r.body == b"hello world!"


# ----------------------------------------------------------------------------- keep-alive

def test_keepalive_two_requests_one_client_connection_reuse_upstream(web):
    p, _ = web
    c = http_conn(p.port)
    try:
        c.request("GET", "/conn")
        r1 = c.getresponse()
        j1 = json.loads(r1.read())
        client_sock_1 = c.sock
        local_1 = c.sock.getsockname()
        c.request("GET", "/conn")
        r2 = c.getresponse()
        j2 = json.loads(r2.read())
        assert c.sock is client_sock_1 and c.sock.getsockname() == local_1, \
            "the proxy closed the client connection between two keep-alive requests"
    finally:
        c.close()
    assert r1.status == r2.status == 200
    assert (r1.getheader("Connection") or "").lower() != "close"
    # the member saw both requests on the same TCP connection: the proxy reused it
    assert j1["conn_id"] == j2["conn_id"], (j1, j2)
    assert j2["request_no"] == j1["request_no"] + 1


def test_upstream_connection_reused_across_client_connections(web):
    """Two client connections, one after the other: the idle upstream connection is reused."""
    p, _ = web
    _, _, b1 = get(p.port, "/conn")
    time.sleep(0.2)
    _, _, b2 = get(p.port, "/conn")
    j1, j2 = json.loads(b1), json.loads(b2)
    assert j1["conn_id"] == j2["conn_id"], (j1, j2)


@pytest.mark.slow
def test_long_poll_31s(web):
    p, _ = web
    t0 = time.monotonic()
    status, _, body = get(p.port, "/longpoll?seconds=31", timeout=60)
    assert status == 200
    assert body == b"slept 31"
    assert time.monotonic() - t0 >= 30.5


def test_pipelined_requests_answered_in_order(web):
    p, _ = web
    reqs = (
        b"GET /bytes/5 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world"
        b"GET /longpoll?seconds=0.3 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /whatever HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    with connect(p.port) as s:
        s.sendall(reqs)
        with s.makefile("rb") as f:
            rs = [read_response(f) for _ in range(4)]
    assert [r.status for r in rs] == [200, 200, 200, 200]
    assert rs[0].body == b"abcde"
    assert rs[1].body == b"hello world"
    assert rs[2].body == b"slept 0.3"
    assert rs[3].body == b"a GET /whatever"


# ----------------------------------------------------------------------------- routing

def test_routing_by_path_prefix_host_and_catch_all(members, proxy):
    a, b, c = members.http("a"), members.http("b"), members.http("c")
    p = proxy(site_conf(
        {"pa": [a.addr], "pb": [b.addr], "pc": [c.addr]},
        routes=[{"path_prefix": "/a/", "pool": "pa"},
                {"host": "b.example.com", "pool": "pb"},
                {"pool": "pc"}],
    ))
    cases = [
        ("/a/x", "whatever.test", "a GET /a/x"),
        ("/a/", "b.example.com", "a GET /a/"),          # first match wins
        ("/zzz", "b.example.com", "b GET /zzz"),
        ("/zzz", "B.Example.COM:8080", "b GET /zzz"),   # case-insensitive, port ignored
        ("/ab", "other.test", "c GET /ab"),             # "/ab" is not under "/a/"
        ("/other", "c.example.com", "c GET /other"),
    ]
    for path, host, expected in cases:
        status, headers, body = get(p.port, path, headers={"Host": host})
        assert (status, body.decode()) == (200, expected), (path, host)


def test_no_route_is_404_and_no_member_sees_it(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"pa": [a.addr]}, routes=[{"path_prefix": "/a/", "pool": "pa"}]))
    assert get(p.port, "/a/1")[0] == 200
    status, _, _ = get(p.port, "/nomatch-xyz")
    assert status == 404
    assert not any("/nomatch-xyz" in target for _, target in member_seen(a))


# ----------------------------------------------------------------------------- forwarding

def _headers_seen(port: int, extra: list[tuple[str, str]] = (), host: str = "front.test") -> list:
    lines = ["GET /headers HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in extra]
    r = raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert r.status == 200, r
    return json.loads(r.body)["headers"]


def _all(headers, name) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def _joined(headers, name) -> str:
    return ", ".join(_all(headers, name))


def test_forwarded_headers_reach_member(web):
    p, _ = web
    h = _headers_seen(p.port)
    assert _joined(h, "X-Forwarded-For") == "127.0.0.1"
    assert _joined(h, "X-Forwarded-Proto") == "http"
    assert _joined(h, "X-Forwarded-Host") == "front.test"
    fwd = _joined(h, "Forwarded").lower()
    assert "for=127.0.0.1" in fwd or 'for="127.0.0.1"' in fwd, fwd
    assert "proto=http" in fwd, fwd
    assert "host=front.test" in fwd or 'host="front.test"' in fwd, fwd


def test_client_x_forwarded_for_replaced_when_not_trusted(web):
    p, _ = web
    h = _headers_seen(p.port, [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4"),
                               ("X-Forwarded-Host", "evil.test"), ("X-Forwarded-Proto", "https")])
    assert _joined(h, "X-Forwarded-For") == "127.0.0.1"
    assert "1.2.3.4" not in _joined(h, "Forwarded")
    assert _joined(h, "X-Forwarded-Host") == "front.test"
    assert _joined(h, "X-Forwarded-Proto") == "http"


def test_client_x_forwarded_for_kept_and_appended_when_trusted(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"web": [a.addr]}, listener={"trusted_proxies": ["127.0.0.1/32"]}))
    h = _headers_seen(p.port, [("X-Forwarded-For", "1.2.3.4")])
    xff = [x.strip() for x in _joined(h, "X-Forwarded-For").split(",")]
    assert xff == ["1.2.3.4", "127.0.0.1"]


def test_hop_by_hop_headers_not_forwarded(web):
    p, _ = web
    h = _headers_seen(p.port, [("Connection", "X-Foo"), ("X-Foo", "1"), ("Keep-Alive", "timeout=5"),
                               ("TE", "trailers"), ("X-Bar", "kept")])
    names = {k.lower() for k, _ in h}
    assert "x-foo" not in names
    assert "keep-alive" not in names
    assert "te" not in names
    assert "x-foo" not in _joined(h, "Connection").lower()
    assert _joined(h, "X-Bar") == "kept"  # an end-to-end header is forwarded


# ----------------------------------------------------------------------------- errors

def _reason_logged(p, status: int, timeout: float = 5.0):
    line = p.wait_log(lambda l: l.get("status") == status and l.get("reason"), timeout)
    assert line, f"no log line with status {status} and a reason:\n{p.stderr_text()[-3000:]}"
    return line


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x02 garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Without Colon\r\n\r\n",
    b"GET / HTTP/9.Z\r\nHost: t\r\n\r\n",
], ids=["binary", "header-no-colon", "bad-version"])
def test_malformed_request_400(web, raw):
    p, m = web
    r = raw_request(p.port, raw)
    assert r.status == 400
    _reason_logged(p, 400)


def test_head_too_large_431(web):
    p, _ = web
    r = raw_request(p.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert r.status == 431
    _reason_logged(p, 431)


def test_too_many_headers_431(web):
    p, _ = web
    hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    r = raw_request(p.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + hdrs + b"\r\n")
    assert r.status == 431


def test_uri_too_long_414(web):
    p, _ = web
    r = raw_request(p.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert r.status == 414
    _reason_logged(p, 414)


def test_cl_plus_te_400_member_never_sees_it(web):
    p, m = web
    r = raw_request(p.port, b"POST /echo?tag=clte HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert r.status == 400
    _reason_logged(p, 400)
    time.sleep(0.2)
    assert not any("clte" in target for _, target in member_seen(m))


def test_slow_head_408(web):
    p, _ = web
    with connect(p.port, timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # the head never ends
        t0 = time.monotonic()
        with s.makefile("rb") as f:
            r = read_response(f)
        elapsed = time.monotonic() - t0
    assert r.status == 408
    assert 0.5 <= elapsed <= 5, elapsed
    _reason_logged(p, 408)


def test_no_member_available_502(members, proxy):
    dead = closed_port()
    p = proxy(site_conf({"web": {"members": [f"{HOST}:{dead}"], "retries": 2,
                                 "connect_timeout": "1s"}}))
    t0 = time.monotonic()
    status, _, _ = get(p.port, "/")
    assert status == 502
    assert time.monotonic() - t0 < 10
    _reason_logged(p, 502)


def test_all_members_full_503(members, proxy):
    from websockets.sync.client import connect as ws_connect

    m = members.ws("w")
    p = proxy(site_conf({"ws": {"members": [m.addr], "max_conns": 1}}))
    with ws_connect(f"{p.ws_url}/hold", proxy=None, open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        t0 = time.monotonic()
        status, _, _ = get(p.port, "/whoami", timeout=60)
        assert status == 503
        assert time.monotonic() - t0 < 30
        _reason_logged(p, 503)
    # the slot is released once the WebSocket is gone
    ok = False
    for _ in range(50):
        if get(p.port, "/whoami")[0] == 200:
            ok = True
            break
        time.sleep(0.1)
    assert ok


def test_member_never_answers_504(members, proxy):
    bh = members.blackhole()
    p = proxy(site_conf({"web": {"members": [bh.addr], "response_timeout": "1s"}}))
    t0 = time.monotonic()
    status, _, _ = get(p.port, "/", timeout=30)
    elapsed = time.monotonic() - t0
    assert status == 504
    assert 0.8 <= elapsed < 10, elapsed
    assert "CONN" in bh.output()  # the member did get the connection
    _reason_logged(p, 504)


# ----------------------------------------------------------------------------- retries

def test_round_robin_dead_member_is_retried_on_healthy_one(members, proxy):
    ok = members.http("ok")
    dead = closed_port()
    p = proxy(site_conf({"web": {"balance": "round_robin",
                                 "members": [f"{HOST}:{dead}", ok.addr],
                                 "retries": 2, "connect_timeout": "1s"}}))
    for i in range(12):
        status, headers, body = get(p.port, f"/n{i}")
        assert (status, body) == (200, f"ok GET /n{i}".encode()), i


def test_round_robin_alternates(members, proxy):
    a, b = members.http("a"), members.http("b")
    p = proxy(site_conf({"web": {"balance": "round_robin", "members": [a.addr, b.addr]}}))
    names = [get(p.port, "/")[2].decode() for _ in range(10)]
    assert sorted(names) == ["a"] * 5 + ["b"] * 5, names
    assert all(x != y for x, y in zip(names, names[1:])), names


def test_post_retried_when_first_member_refuses(members, proxy):
    ok = members.http("ok")
    p = proxy(site_conf({"web": {"balance": "round_robin",
                                 "members": [f"{HOST}:{closed_port()}", ok.addr]}}))
    for i in range(4):
        body = os.urandom(5000)
        head = f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        r = full_duplex_request(p.port, head, [body])
        assert (r.status, r.body) == (200, body), i


def test_head_request_then_get_on_same_connection(web):
    p, _ = web
    with connect(p.port) as s:
        s.sendall(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n"
                  b"GET /bytes/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        with s.makefile("rb") as f:
            r1 = read_response(f, head_request=True)
            r2 = read_response(f)
    assert r1.status == 200 and r1.header("Content-Length") == "1000"
    assert (r2.status, r2.body) == (200, b"abc")


def test_expect_100_continue(web):
    p, _ = web
    body = os.urandom(200_000)
    with connect(p.port) as s:
        s.sendall(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
                  f"Expect: 100-continue\r\n\r\n".encode())
        f = s.makefile("rb")
        s.settimeout(2)
        interim = None
        try:
            interim = read_response(f)  # a 100 Continue, or nothing within 2 s (like curl)
        except (socket.timeout, TimeoutError):
            pass
        s.settimeout(10)
        if interim is not None:
            assert interim.status == 100, interim
        # a fresh reader: a timed-out BufferedReader must not be reused
        s.sendall(body)
        r = read_response(s.makefile("rb") if interim is None else f)
    assert r.status == 200
    assert r.body == body


def test_http10_request(web):
    """An HTTP/1.0 request without Host (legal in 1.0). Forwarded upstream as HTTP/1.1, it
    must carry a Host header (RFC 9112 3.2), or a strict member rejects it with 400."""
    p, _ = web
    with connect(p.port) as s:
        s.sendall(b"GET /bytes/4 HTTP/1.0\r\n\r\n")
        data = read_until_closed_sock(s)
    assert data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]
    assert data.endswith(b"\r\n\r\nabcd")


def read_until_closed_sock(s):
    s.settimeout(5)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 6\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
], ids=["dup-cl", "cl-list", "te-not-final-chunked", "te-xchunked", "te-te-cl"])
def test_ambiguous_framing_400_member_never_sees_it(web, framing):
    p, m = web
    tag = f"smuggle{abs(hash(framing))}"
    r = raw_request(p.port, b"POST /echo?tag=" + tag.encode() + b" HTTP/1.1\r\nHost: t\r\n" + framing
                    + b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
    assert r.status == 400
    time.sleep(0.2)
    targets = [t for _, t in member_seen(m)]
    assert not any(tag in t or "smuggled" in t for t in targets), targets


def test_keepalive_timeout_closes_idle_client(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"web": [a.addr]}, listener={"keepalive_timeout": "1s"}))
    with connect(p.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        f = s.makefile("rb")
        assert read_response(f).status == 200
        t0 = time.monotonic()
        s.settimeout(10)
        assert f.read(1) == b"", "the proxy sent more bytes on an idle connection"
        elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed <= 5, elapsed


def test_member_killed_mid_response_client_sees_truncation(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"web": [a.addr]}))
    size = 64 * MiB
    with connect(p.port, timeout=10) as s:
        s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        f = s.makefile("rb")
        line = f.readline()
        assert b" 200 " in line
        while f.readline() not in (b"\r\n", b""):
            pass
        got = len(f.read(65536))
        a.kill()
        t0 = time.monotonic()
        while True:
            chunk = f.read1(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        assert time.monotonic() - t0 < 10
    # the body was cut: the client must not be led to believe it got a complete response
    assert got < size, "the whole body arrived although the member was killed"
