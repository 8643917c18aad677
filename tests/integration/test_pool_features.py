"""Pool features through the running proxy: sticky cookies, hash keys, the queue, PROXY to
http members. Members are the real aiohttp test app (X-Member names the one that answered)."""

from __future__ import annotations

import json
import socket
import threading
import time

from .support import (HOST, connect, free_port, raw_request, raw_ws_connect, read_response, site_conf,
                      wait_until, ws_handshake_request, ws_key)

COOKIE = "WSPROXY_SRV"
SECRET = "test-secret-0123456789abcdef"


def request(port: int, path: str = "/", headers: dict | None = None, *, timeout: float = 20.0):
    lines = [f"GET {path} HTTP/1.1", "Host: example.com", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode(), timeout=timeout)


def http_logs(p, count: int) -> list[dict]:
    """The access log's http lines once there are ``count`` (a line is written just after
    its response, so a test reading right after the answer must wait for it)."""
    assert wait_until(lambda: len(p.access_logs("http")) >= count, 5), p.access_logs("http")
    return p.access_logs("http")


def sticky_value(resp) -> str | None:
    for value in resp.header_all("Set-Cookie"):
        name, _, rest = value.partition("=")
        if name == COOKIE:
            return rest.partition(";")[0]
    return None


def two_members(members):
    return members.http("a"), members.http("b")


def sticky_conf(a, b, **persist) -> str:
    return site_conf({"app": {"balance": "round_robin", "members": [a.addr, b.addr],
                              "persist": {"cookie": COOKIE, **persist}}})


# --------------------------------------------------------------------------- persistence


def test_cookie_inserted_once_then_followed(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    first = request(p.port)
    assert first.status == 200
    set_cookie = [v for v in first.header_all("Set-Cookie") if v.startswith(COOKIE + "=")]
    assert len(set_cookie) == 1
    attrs = [part.strip() for part in set_cookie[0].split(";")[1:]]
    assert attrs == ["Path=/", "HttpOnly", "SameSite=Lax"]  # no Secure on a plain listener, no Max-Age
    value = sticky_value(first)
    # Opaque: neither the address nor the port of any member shows through.
    for m in (a, b):
        assert str(m.port) not in value and m.addr not in value
    member = first.header("X-Member")
    for _ in range(12):  # round robin would alternate; the cookie pins every request
        r = request(p.port, headers={"Cookie": f"other=1; {COOKIE}={value}"})
        assert r.header("X-Member") == member
        assert sticky_value(r) is None  # a valid cookie is not set again
    picks = [e.get("pick") for e in http_logs(p, 13)]
    assert picks[0] == "round_robin" and set(picks[1:]) == {"cookie"}


def test_sticky_cookie_never_reaches_the_member(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    value = sticky_value(request(p.port))
    r = request(p.port, "/headers", headers={"Cookie": f"a=1; {COOKIE}={value}; b=2"})
    seen = [v for k, v in json.loads(r.body)["headers"] if k.lower() == "cookie"]
    assert seen == ["a=1; b=2"]
    r = request(p.port, "/headers", headers={"Cookie": f"{COOKIE}={value}"})
    assert not [v for k, v in json.loads(r.body)["headers"] if k.lower() == "cookie"]


def test_forged_cookie_is_balanced_and_reset(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    good = {sticky_value(request(p.port)), sticky_value(request(p.port))}
    assert len(good) == 2  # round robin put the first two requests on different members
    for forged in ("AAAAAAAAAAAAAAAAAAAA", "127.0.0.1:%d" % a.port, ""):
        r = request(p.port, headers={"Cookie": f"{COOKIE}={forged}"})
        assert r.status == 200
        assert sticky_value(r) in good  # balanced normally, and told where it landed


def test_cookie_for_a_down_member_moves_and_is_reset(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    for_a = for_b = None
    while for_a is None or for_b is None:
        r = request(p.port)
        if r.header("X-Member") == "a":
            for_a = sticky_value(r)
        else:
            for_b = sticky_value(r)
    a.kill()
    r = request(p.port, headers={"Cookie": f"{COOKIE}={for_a}"})
    assert r.status == 200 and r.header("X-Member") == "b"  # connect failed, retried on b
    assert sticky_value(r) == for_b
    assert http_logs(p, 3)[-1]["pick"] == "round_robin"


def test_cookie_for_a_full_member_is_balanced_and_reset(members, proxy):
    a, b = members.http("a"), members.http("b")
    conf = site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}, {"addr": b.addr, "max_conns": 1}],
                              "persist": {"cookie": COOKIE}, "queue": {"size": 0}}})
    p = proxy(conf)
    for_a = None
    while for_a is None:
        r = request(p.port)
        if r.header("X-Member") == "a":
            for_a = sticky_value(r)
    holder = threading.Thread(target=request, args=(p.port, "/longpoll?seconds=1.5"),
                              kwargs={"headers": {"Cookie": f"{COOKIE}={for_a}"}})
    holder.start()
    try:
        assert wait_until(lambda: '"GET", "/longpoll' in json.dumps(
            json.loads(request(a.port, "/seen").body)), 5)
        r = request(p.port, headers={"Cookie": f"{COOKIE}={for_a}"})
        assert r.status == 200 and r.header("X-Member") == "b"
        assert sticky_value(r) not in (None, for_a)
    finally:
        holder.join()


def test_websocket_101_carries_the_cookie_and_follows_it(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))

    def upgrade(cookie: str | None = None):
        extra = [("Cookie", f"{COOKIE}={cookie}")] if cookie else []
        s = connect(p.port)
        s.sendall(ws_handshake_request("/ws", key=ws_key(), extra=extra))
        with s, s.makefile("rb") as f:
            head = read_response(f, head_request=True)
        assert head.status == 101
        return head

    value = sticky_value(upgrade())
    assert value
    for _ in range(4):
        assert sticky_value(upgrade(value)) is None
    assert wait_until(lambda: len(p.access_logs("ws")) == 5, 5)
    logs = p.access_logs("ws")
    assert len({e["member"] for e in logs}) == 1  # round robin would have alternated
    assert [e["pick"] for e in logs] == ["round_robin"] + ["cookie"] * 4


def test_long_poll_answer_carries_the_cookie(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    r = request(p.port, "/longpoll?seconds=0.3")
    assert r.body.startswith(b"slept") and sticky_value(r)


def test_configured_secret_is_stable_across_restarts_and_max_age_slides(members, proxy):
    a, b = two_members(members)
    conf = sticky_conf(a, b, secret=SECRET, max_age="1h")
    first = proxy(conf)
    r1 = request(first.port)
    value, member = sticky_value(r1), r1.header("X-Member")
    assert [v for v in r1.header_all("Set-Cookie") if v.startswith(COOKIE)][0].endswith("; Max-Age=3600")
    first.stop()
    second = proxy(conf)  # a restart with the same secret: the old cookie still routes
    for _ in range(4):
        r = request(second.port, headers={"Cookie": f"{COOKIE}={value}"})
        assert r.header("X-Member") == member
        assert sticky_value(r) == value  # re-sent on every response: Max-Age slides
    other = proxy(sticky_conf(a, b, secret="another-secret-0123456789"))
    r = request(other.port, headers={"Cookie": f"{COOKIE}={value}"})
    assert sticky_value(r) not in (None, value)  # another secret: unknown, balanced, re-set
    assert http_logs(other, 1)[-1]["pick"] == "round_robin"


def test_generated_secret_is_logged_as_a_warning(members, proxy):
    a, b = two_members(members)
    p = proxy(sticky_conf(a, b))
    entry = p.wait_log(lambda e: "secret" in e.get("msg", "") and e.get("pool") == "app")
    assert entry is not None and entry["level"] == "warning"
    configured = proxy(sticky_conf(a, b, secret=SECRET))
    assert configured.wait_log(lambda e: "ready" in e.get("msg", ""))
    assert not [e for e in configured.logs() if "secret" in e.get("msg", "")]


# --------------------------------------------------------------------------- hashing


def test_hash_by_header_is_stable_and_falls_back_without_it(members, proxy):
    ms = [members.http(n) for n in "abc"]
    p = proxy(site_conf({"app": {"balance": "hash", "hash_key": "header:X-User",
                                 "members": [m.addr for m in ms]}}))
    placed = {}
    for user in range(30):
        got = {request(p.port, headers={"X-User": f"u{user}"}).header("X-Member") for _ in range(3)}
        assert len(got) == 1
        placed[user] = got.pop()
    assert len(set(placed.values())) == 3  # 30 users spread over all three members
    r = request(p.port)
    assert r.status == 200
    logs = http_logs(p, 91)
    assert logs[-1]["pick"] == "hash_fallback"
    assert {e["pick"] for e in logs[:-1]} == {"hash"}


def test_hash_by_query_and_cookie(members, proxy):
    ms = [members.http(n) for n in "abc"]
    for key, make in (("query:room", lambda v: (f"/?x=1&room={v}", {})),
                      ("cookie:sid", lambda v: ("/", {"Cookie": f"theme=dark; sid={v}"}))):
        p = proxy(site_conf({"app": {"balance": "hash", "hash_key": key, "members": [m.addr for m in ms]}}))
        for v in range(10):
            path, headers = make(v)
            assert len({request(p.port, path, headers).header("X-Member") for _ in range(3)}) == 1


def test_hash_by_source_ip_pins_one_client(members, proxy):
    ms = [members.http(n) for n in "abc"]
    p = proxy(site_conf({"app": {"balance": "hash", "members": [m.addr for m in ms]}}))
    assert len({request(p.port).header("X-Member") for _ in range(10)}) == 1


# --------------------------------------------------------------------------- queueing


def _hold(port: int, seconds: float) -> threading.Thread:
    t = threading.Thread(target=request, args=(port, f"/longpoll?seconds={seconds}"), daemon=True)
    t.start()
    return t


def test_queue_is_fifo_and_serves_as_soon_as_a_slot_frees(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}],
                                 "queue": {"size": 10, "timeout": "10s"}}}))
    holder = _hold(p.port, 1.0)
    time.sleep(0.3)
    done: list[tuple[int, float, int]] = []
    threads = []
    t0 = time.monotonic()
    for i in range(4):
        def one(i=i):
            r = request(p.port, f"/n{i}")
            done.append((i, time.monotonic() - t0, r.status))
        th = threading.Thread(target=one)
        th.start()
        threads.append(th)
        time.sleep(0.1)  # a known arrival order
    for th in threads + [holder]:
        th.join(15)
    assert [status for _, _, status in done] == [200] * 4
    assert [i for i, _, _ in done] == [0, 1, 2, 3]  # served in arrival order
    seen = [target for _, target in json.loads(request(a.port, "/seen").body)]
    assert [t for t in seen if t.startswith("/n")] == ["/n0", "/n1", "/n2", "/n3"]
    assert done[0][1] < 2.0  # the first waiter ran as soon as the 1 s long poll ended
    assert {e["pick"] for e in http_logs(p, 5) if e["path"].startswith("/n")} == {"queue"}


def test_queue_overflow_and_timeout_get_503_with_retry_after(members, proxy):
    a = members.http("a")
    admin = free_port()
    p = proxy(site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}],
                                 "queue": {"size": 1, "timeout": "1s"}}},
                        server={"admin": f"{HOST}:{admin}"}))
    holder = _hold(p.port, 3.0)
    time.sleep(0.3)
    waiting: list = []
    waiter = threading.Thread(target=lambda: waiting.append((request(p.port), time.monotonic())))
    t0 = time.monotonic()
    waiter.start()
    time.sleep(0.3)
    overflow = request(p.port)  # the queue (size 1) is taken: 503 at once
    assert overflow.status == 503 and overflow.header("Retry-After") == "1"
    assert time.monotonic() - t0 < 0.9
    assert b"queue" in overflow.body
    waiter.join(10)
    timed_out, at = waiting[0]
    assert timed_out.status == 503 and timed_out.header("Retry-After") == "1"
    assert 0.9 <= at - t0 < 3.0  # after the queue timeout, before the slot freed
    holder.join(10)
    assert request(p.port).status == 200
    # The pool's counters, node-wide, in the admin API and /metrics.
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{HOST}:{admin}/api/pools", timeout=5) as resp:
        app = json.loads(resp.read())["pools"]["app"]
    assert (app["queued_total"], app["queue_rejects"], app["hash_fallbacks"]) == (1, 2, 0)
    with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'wsproxy_pool_queue_rejects_total{pool="app"} 2' in text
    assert 'wsproxy_pool_queued_total{pool="app"} 1' in text


def test_no_queue_means_503_at_once(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}], "queue": {"size": 0}}}))
    holder = _hold(p.port, 1.5)
    time.sleep(0.3)
    t0 = time.monotonic()
    r = request(p.port)
    assert r.status == 503 and r.header("Retry-After") and time.monotonic() - t0 < 0.5
    holder.join(10)


def test_a_queued_client_that_gives_up_leaks_no_slot(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}],
                                 "queue": {"size": 10, "timeout": "20s"}}}))
    holder = _hold(p.port, 1.0)
    time.sleep(0.3)
    quitters = []
    for _ in range(3):  # three clients queue, then hang up
        s = connect(p.port)
        s.sendall(b"GET /quit HTTP/1.1\r\nHost: x\r\n\r\n")
        quitters.append(s)
    time.sleep(0.2)
    for s in quitters:
        s.close()
    t0 = time.monotonic()
    r = request(p.port, "/after")  # queued behind the quitters' (abandoned) places
    assert r.status == 200
    assert time.monotonic() - t0 < 3.0  # served when the long poll ended, not after 20 s
    holder.join(10)
    # The one slot is free again: sequential requests never wait or fail.
    for _ in range(5):
        t0 = time.monotonic()
        assert request(p.port).status == 200 and time.monotonic() - t0 < 1.0
    seen = [target for _, target in json.loads(request(a.port, "/seen").body)]
    assert "/quit" not in seen
    reasons = [e.get("reason") or "" for e in http_logs(p, 10)]
    assert sum("waited in the queue" in r for r in reasons) == 3


def test_a_waiting_websocket_upgrade_gets_the_slot(members, proxy):
    a = members.http("a")
    p = proxy(site_conf({"app": {"members": [{"addr": a.addr, "max_conns": 1}],
                                 "queue": {"size": 5, "timeout": "10s"}}}))
    holder = _hold(p.port, 0.8)
    time.sleep(0.3)
    s, _ = raw_ws_connect(p.port, "/ws")
    s.close()
    holder.join(10)


# --------------------------------------------------------------------------- PROXY to http members


def test_http_pool_sends_proxy_v1_header(members, proxy):
    # A bare member that reads the PROXY line, then one request, and answers with what it saw.
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    seen: list[bytes] = []

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as f:
                seen.append(f.readline())
                while f.readline() not in (b"\r\n", b""):
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = proxy(site_conf({"app": {"members": [f"{HOST}:{port}"], "proxy_protocol": "v1"}}))
    clients = []
    for _ in range(2):  # two requests: no member connection is reused for another client
        s = connect(p.port)
        clients.append(s.getsockname())
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with s, s.makefile("rb") as f:
            assert read_response(f).body == b"ok"
    t.join(5)
    srv.close()
    for line, (ip, cport) in zip(seen, clients):
        fields = line.decode().split()
        assert fields[:3] == ["PROXY", "TCP4", ip] and fields[4] == str(cport) and fields[5] == str(p.port)
