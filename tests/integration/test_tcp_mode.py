"""Layer 4 (``mode = "tcp"`` listeners) and the PROXY protocol, black box.

The proxy runs as ``python -m wsproxy``; members are tests/integration/servers/tcp_echo.py
(one behaviour per ``--mode``), proxy_header_member.py (parses the PROXY header it gets and
answers what it saw) and http_app.py. PROXY headers sent by test clients are built by hand
(tcp_support.py), not by wsproxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from .support import HOST, closed_port, read_response, site_conf, wait_until
from .tcp_support import (TcpMembers, access_for, closed_within, conn_count, connect, proxy_header, proxy_v1,
                          proxy_v2, recv_exactly, recv_json, recv_line, recv_to_eof, reset_close, settle,
                          tcp_conf, wait_output)

MiB = 1024 * 1024
FAKE = ("203.0.113.7", 40123)  # TEST-NET-3: the client a front balancer announces
FRONT = ("198.51.100.1", 443)  # where that client connected (the balancer's address)


@pytest.fixture
def tcp_members(tmp_path):
    factory = TcpMembers(tmp_path)
    try:
        yield factory
    finally:
        factory.kill_all()


def one_echo_proxy(tcp_members, proxy, mode="echo", **conf):
    m = tcp_members.echo("a", mode)
    p = proxy(tcp_conf([m.addr], **conf))
    if mode != "stall":  # (a stalled member keeps the probe's half-closed connection open)
        settle(p)
    return p, m


# ----------------------------------------------------------------------------- relaying

def test_plain_blocking_socket_client(tcp_members, proxy):
    """The README example: any TCP client works through a tcp listener."""
    p, _ = one_echo_proxy(tcp_members, proxy)
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"hello over layer 4\n")
        assert s.recv(1024) == b"hello over layer 4\n"
        port = s.getsockname()[1]
    rec = access_for(p, port)
    assert rec["bytes_in"] == rec["bytes_out"] == 19
    assert rec["listener"] == "raw" and rec["pool"] == "backend"
    assert rec["member"].endswith(":%d" % tcp_members.started[0].port)
    assert rec["client"].startswith("127.0.0.1:")
    assert rec["closed_by"] == "client" and rec["reason"] is None
    assert rec["duration_ms"] >= 0


def test_one_mib_full_duplex_echo(tcp_members, proxy):
    p, _ = one_echo_proxy(tcp_members, proxy)
    payload = os.urandom(MiB)
    with connect(p.port, timeout=10) as s:
        port = s.getsockname()[1]
        errors = []

        def writer():
            try:
                view = memoryview(payload)
                for i in range(0, MiB, 16384):  # interleaved with the reads of the main thread
                    s.sendall(view[i:i + 16384])
                s.shutdown(socket.SHUT_WR)
            except OSError as exc:
                errors.append(exc)

        t = threading.Thread(target=writer)
        t.start()
        got = recv_to_eof(s)
        t.join(10)
    assert not errors
    assert len(got) == MiB
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    rec = access_for(p, port)
    assert rec["bytes_in"] == rec["bytes_out"] == MiB


def test_fifty_concurrent_connections_over_two_members(tcp_members, proxy):
    a, b = tcp_members.echo("a"), tcp_members.echo("b")
    p = proxy(tcp_conf([a.addr, b.addr], pool={"balance": "round_robin"}))
    settle(p)
    before = conn_count(a), conn_count(b)
    socks = [connect(p.port) for _ in range(50)]
    try:
        for i, s in enumerate(socks):  # all 50 are open at once
            s.sendall(b"conn %d\n" % i)
        for i, s in enumerate(socks):
            assert recv_line(s) == b"conn %d\n" % i
    finally:
        for s in socks:
            s.close()
    got = conn_count(a) - before[0], conn_count(b) - before[1]
    assert got == (25, 25)
    assert wait_until(lambda: len(p.access_logs("tcp")) == 51, 5)  # and the readiness probe


def test_member_that_speaks_first(tcp_members, proxy):
    """Server-first protocols (SMTP, SSH, MySQL): the member's greeting arrives before the
    client says anything, possibly before the proxy has taken the new connection over."""
    p, _ = one_echo_proxy(tcp_members, proxy, mode="greet")
    results = []

    def client(k):
        for _ in range(k):
            try:
                with connect(p.port) as s:
                    results.append(recv_line(s).startswith(b"HELLO a "))
            except OSError:
                results.append(False)

    threads = [threading.Thread(target=client, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 200 and all(results), "%d of %d greetings lost" % (results.count(False), len(results))


# ----------------------------------------------------------------------------- half-close

def test_client_half_close_reaches_member_which_can_still_answer(tcp_members, proxy):
    p, _ = one_echo_proxy(tcp_members, proxy, mode="eof-report")
    with connect(p.port) as s:
        port = s.getsockname()[1]
        s.sendall(b"abc" * 1000)
        s.shutdown(socket.SHUT_WR)  # FIN: our side is done, theirs is not
        assert recv_to_eof(s) == b"abc" * 1000 + b"EOF-SEEN 3000\n"
    rec = access_for(p, port)
    assert rec["closed_by"] == "client" and rec["bytes_out"] == 3000 + 14


def test_member_half_close_reaches_client_which_can_still_send(tcp_members, proxy):
    p, m = one_echo_proxy(tcp_members, proxy, mode="shut-first")
    with connect(p.port) as s:
        port = s.getsockname()[1]
        s.sendall(b"hi")
        assert recv_to_eof(s) == b"BYE\n"  # the member's FIN arrived as a FIN
        more = os.urandom(300_000)
        s.sendall(more)  # our direction is still open, through the proxy
        s.shutdown(socket.SHUT_WR)
        n = conn_count(m)  # our connection (the readiness probe came first)
        assert wait_output(m, r"^TOTAL %d " % n) == "TOTAL %d %d" % (n, 2 + len(more))
        assert closed_within(s, 3)[0]
    rec = access_for(p, port)
    assert rec["closed_by"] == "member" and rec["bytes_in"] == 2 + len(more)


# ----------------------------------------------------------------------------- failures

def test_refused_member_is_retried_on_another(tcp_members, proxy):
    m = tcp_members.echo("live")
    p = proxy(tcp_conf([f"{HOST}:{closed_port()}", m.addr], pool={"retries": 2, "connect_timeout": "1s"}))
    settle(p)
    before = conn_count(m)
    for i in range(10):
        with connect(p.port) as s:
            s.sendall(b"try %d\n" % i)
            assert recv_line(s) == b"try %d\n" % i
    assert conn_count(m) - before == 10
    assert p.wait_log(lambda l: l.get("msg") == "member connect failed")


def test_no_member_closes_the_client_with_a_log_line(proxy):
    p = proxy(tcp_conf([f"{HOST}:{closed_port()}"], pool={"retries": 0}))
    with connect(p.port) as s:
        port = s.getsockname()[1]
        assert closed_within(s, 3)[0]
    rec = access_for(p, port)
    assert rec["closed_by"] == "proxy" and "could not connect" in rec["reason"]
    assert rec["member"] is None
    assert p.wait_log(lambda l: l.get("msg") == "tcp connect failed")


def test_member_reset_reaches_the_client_as_a_reset(tcp_members, proxy):
    p, m = one_echo_proxy(tcp_members, proxy, mode="rst")
    with connect(p.port) as s:
        port = s.getsockname()[1]
        s.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            s.recv(100)
    rec = access_for(p, port)
    assert rec["closed_by"] == "member" and "member connection lost" in rec["reason"]


def test_client_reset_reaches_the_member_as_a_reset_and_a_fin_as_a_fin(tcp_members, proxy):
    p, m = one_echo_proxy(tcp_members, proxy, mode="watch")
    s = connect(p.port)
    port = s.getsockname()[1]
    s.sendall(b"ping")
    assert recv_exactly(s, 4) == b"ping"  # the member connection is up
    n = conn_count(m)
    reset_close(s)
    assert wait_output(m, r"^(RESET|EOF) %d$" % n) == "RESET %d" % n
    assert "client connection lost" in access_for(p, port)["reason"]
    s = connect(p.port)
    port = s.getsockname()[1]
    s.sendall(b"ping")
    assert recv_exactly(s, 4) == b"ping"
    n = conn_count(m)
    s.close()  # a clean close, for contrast
    assert wait_output(m, r"^(RESET|EOF) %d$" % n) == "EOF %d" % n
    assert access_for(p, port)["reason"] is None


def test_idle_timeout_closes_both_sides(tcp_members, proxy):
    p, m = one_echo_proxy(tcp_members, proxy, mode="watch", listener={"idle_timeout": "400ms"})
    with connect(p.port) as s:
        port = s.getsockname()[1]
        for i in range(5):  # 600 ms of traffic in steps shorter than the idle timeout
            if i:
                time.sleep(0.15)
            s.sendall(b"x")
            assert recv_exactly(s, 1) == b"x"
        n = conn_count(m)
        closed, took = closed_within(s, 3)
        assert closed and 0.3 < took < 1.5
    assert wait_output(m, r"^(RESET|EOF) %d$" % n) == "EOF %d" % n  # the member side was closed too
    assert p.wait_log(lambda l: l.get("msg") == "tcp connection idle: closed")
    rec = access_for(p, port)
    assert rec["closed_by"] == "proxy" and "idle timeout" in rec["reason"]


def test_shutdown_closes_tcp_connections(tcp_members, proxy):
    p, m = one_echo_proxy(tcp_members, proxy, mode="watch", server={"grace": "5s"})
    with connect(p.port) as s:
        s.sendall(b"x")
        assert recv_exactly(s, 1) == b"x"
        n = conn_count(m)
        started = time.monotonic()
        assert p.stop(timeout=5) == 0
        assert time.monotonic() - started < 2  # not the whole grace period
        assert closed_within(s, 1)[0]
    assert wait_output(m, r"^(RESET|EOF) %d$" % n) == "EOF %d" % n


# ----------------------------------------------------------------------------- PROXY to members

@pytest.mark.parametrize("where", ["listener", "pool"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_to_member_carries_the_client_address(tcp_members, proxy, version, where):
    m = tcp_members.proxy_header("pp")
    conf = {"listener": {"proxy_protocol": version}} if where == "listener" else {"pool": {"proxy_protocol": version}}
    p = proxy(tcp_conf([m.addr], **conf))
    with connect(p.port) as s:
        seen = recv_json_after(s, b"after the header\n")
        assert seen["version"] == int(version[1]) and seen["command"] == "PROXY"
        assert seen["family"] == "TCP4"
        assert seen["src"] == [HOST, s.getsockname()[1]]  # our own address and port
        assert seen["dst"] == [HOST, p.port]
        assert recv_line(s) == b"after the header\n"  # then bytes flow as usual


def recv_json_after(s: socket.socket, first: bytes) -> dict:
    s.sendall(first)
    return recv_json(s)


def test_listener_proxy_protocol_wins_over_the_pool(tcp_members, proxy):
    m = tcp_members.proxy_header("pp")
    p = proxy(tcp_conf([m.addr], listener={"proxy_protocol": "v2"}, pool={"proxy_protocol": "v1"}))
    with connect(p.port) as s:
        assert recv_json_after(s, b"x")["version"] == 2


def test_no_proxy_header_unless_asked(tcp_members, proxy):
    m = tcp_members.proxy_header("pp")
    p = proxy(tcp_conf([m.addr]))
    with connect(p.port) as s:
        assert "no PROXY header" in recv_json_after(s, b"GET / HTTP/1.1\r\n\r\n")["error"]


# ----------------------------------------------------------------------------- accept_proxy

TRUSTED = {"accept_proxy": True, "trusted_proxies": ["127.0.0.1/32"]}
UNTRUSTED = {"accept_proxy": True, "trusted_proxies": ["10.0.0.0/8"]}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_accept_proxy_tcp_uses_the_announced_client(tcp_members, proxy, version):
    m = tcp_members.proxy_header("pp")
    p = proxy(tcp_conf([m.addr], listener={**TRUSTED, "proxy_protocol": "v1"}))
    with connect(p.port) as s:
        # header and first bytes in one segment: the bytes after the header are the client's
        s.sendall(proxy_header(version, FAKE, FRONT) + b"payload\n")
        seen = recv_json(s)
        assert seen["src"] == list(FAKE) and seen["dst"] == list(FRONT)
        assert recv_line(s) == b"payload\n"
    rec = p.wait_log(lambda l: l.get("kind") == "tcp" and l["client"] == "%s:%d" % FAKE)
    assert rec["bytes_in"] == len(b"payload\n")


def test_accept_proxy_header_sent_byte_by_byte(tcp_members, proxy):
    m = tcp_members.echo("a")
    p = proxy(tcp_conf([m.addr], listener=TRUSTED))
    with connect(p.port) as s:
        for b in proxy_v2(FAKE, FRONT, tlvs=b"\x04\x00\x02\x00\x00"):  # a NOOP TLV, skipped
            s.send(bytes([b]))
            time.sleep(0.002)
        s.sendall(b"echo me")
        assert recv_exactly(s, 7) == b"echo me"
    assert p.wait_log(lambda l: l.get("kind") == "tcp" and l["client"] == "%s:%d" % FAKE)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_accept_proxy_http_sets_x_forwarded_for_and_the_access_log(members, proxy, version):
    web = members.http("a")
    p = proxy(site_conf({"web": [web.addr]}, listener=TRUSTED))
    with connect(p.port) as s:
        s.sendall(proxy_header(version, FAKE, FRONT)
                  + b"GET /headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
        with s.makefile("rb") as f:
            r = read_response(f)
    assert r.status == 200
    headers = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
    # 203.0.113.7 is not a trusted proxy: the X-Forwarded-For it sent is replaced
    assert headers["x-forwarded-for"] == FAKE[0]
    rec = p.wait_log(lambda l: l.get("kind") == "http")
    assert rec["client"] == "%s:%d" % FAKE


@pytest.mark.parametrize("header", [proxy_v2(None, None, local=True), proxy_v1(None, None)], ids=["v2-LOCAL", "v1-UNKNOWN"])
def test_accept_proxy_local_and_unknown_keep_the_real_peer(members, proxy, header):
    web = members.http("a")
    p = proxy(site_conf({"web": [web.addr]}, listener=TRUSTED))
    with connect(p.port) as s:
        s.sendall(header + b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        with s.makefile("rb") as f:
            r = read_response(f)
    headers = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
    assert headers["x-forwarded-for"] == HOST


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_untrusted_peer_sending_a_proxy_header_is_rejected(members, tcp_members, proxy, mode):
    if mode == "http":
        p = proxy(site_conf({"web": [members.http("a").addr]}, listener=UNTRUSTED))
        after = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    else:
        p = proxy(tcp_conf([tcp_members.echo("a").addr], listener=UNTRUSTED))
        after = b"hello"
    with connect(p.port) as s:
        s.sendall(proxy_v1(FAKE, FRONT) + after)
        s.settimeout(3)
        try:
            got = recv_to_eof(s)
        except ConnectionResetError:
            got = b""
        assert got == b""  # closed, nothing relayed back
    rec = p.wait_log(lambda l: l.get("msg") == "PROXY header rejected")
    assert "not in trusted_proxies" in rec["reason"] and rec["client"].startswith("127.0.0.1:")
    assert FAKE[0] not in json.dumps(p.access_logs())


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_untrusted_peer_without_a_header_is_a_direct_client(members, tcp_members, proxy, mode):
    if mode == "http":
        p = proxy(site_conf({"web": [members.http("a").addr]}, listener=UNTRUSTED))
        with connect(p.port) as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            with s.makefile("rb") as f:
                r = read_response(f)
        headers = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
        assert headers["x-forwarded-for"] == HOST
    else:
        p = proxy(tcp_conf([tcp_members.echo("a").addr], listener=UNTRUSTED))
        with connect(p.port) as s:
            s.sendall(b"PRO")  # could still become "PROXY ": held...
            time.sleep(0.1)
            s.sendall(b"TOCOL x\n")  # ...until it cannot
            assert recv_line(s) == b"PROTOCOL x\n"
    assert not p.wait_log(lambda l: l.get("msg") == "PROXY header rejected", timeout=0.2)


@pytest.mark.parametrize("mode", ["http", "tcp"])
@pytest.mark.parametrize("bad, why", [
    (b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\n", "bare LF"),
    (b"\r\n\r\n\x00\r\nQUIT\n" + b"\x31\x11\x00\x0c" + bytes(12), "version nibble"),
    (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", "not a PROXY header"),
], ids=["v1-bad-address", "v1-bare-lf", "v2-bad-version", "missing"])
def test_trusted_peer_with_a_malformed_or_missing_header_is_rejected(members, tcp_members, proxy, mode, bad, why):
    if mode == "http":
        p = proxy(site_conf({"web": [members.http("a").addr]}, listener=TRUSTED))
    else:
        p = proxy(tcp_conf([tcp_members.echo("a").addr], listener=TRUSTED))
    with connect(p.port) as s:
        s.sendall(bad + b"more")
        assert closed_within(s, 3)[0]
    rec = p.wait_log(lambda l: l.get("msg") == "PROXY header rejected")
    assert why in rec["reason"]
    assert not p.access_logs()  # no session started
    if mode == "tcp":
        assert conn_count(tcp_members.started[0]) == 0  # and no member connection


def test_trusted_peer_must_send_its_header_within_head_timeout(tcp_members, proxy):
    p = proxy(tcp_conf([tcp_members.echo("a").addr], listener={**TRUSTED, "head_timeout": "300ms"}))
    with connect(p.port) as s:
        s.sendall(b"PROXY TCP4 ")  # then nothing
        closed, took = closed_within(s, 3)
        assert closed and 0.2 < took < 2
    rec = p.wait_log(lambda l: l.get("msg") == "PROXY header rejected")
    assert "within 0.3s" in rec["reason"]


def test_accept_proxy_source_ip_hashing_uses_the_announced_address(tcp_members, proxy):
    a, b = tcp_members.proxy_header("a"), tcp_members.proxy_header("b")
    p = proxy(tcp_conf([a.addr, b.addr], listener=TRUSTED,
                       pool={"balance": "hash", "hash_key": "source_ip", "proxy_protocol": "v2"}))

    def member_for(ip: str, port: int) -> str:
        with connect(p.port) as s:
            s.sendall(proxy_v1((ip, port), FRONT))
            seen = recv_json(s)
        assert seen["src"] == [ip, port]
        return seen["name"]

    # one announced client, many source ports (and always the same real peer): one member
    assert {member_for("203.0.113.7", 1000 + i) for i in range(8)} == {member_for("203.0.113.7", 1)}
    # many announced clients from the same real peer: both members
    assert {member_for("203.0.113.%d" % i, 5000) for i in range(1, 40)} == {"a", "b"}


# ----------------------------------------------------------------------------- backpressure

def test_backpressure_member_to_a_client_that_does_not_read(tcp_members, proxy):
    """64 MiB from the member; the client reads nothing for a while: the member's sends must
    stall (the proxy pauses reading it) instead of the proxy buffering everything."""
    p, m = one_echo_proxy(tcp_members, proxy, mode="flood")
    rss_before = p.rss_kb()
    with connect(p.port, timeout=10) as s:
        s.sendall(b"go")
        line = wait_output(m, r"^STALLED ", timeout=10)
        assert line is not None, "the member never had to wait: nothing pushed back"
        stalled_at = int(line.split()[2])
        assert stalled_at < 40 * MiB  # kernel buffers on both legs, not the whole stream
        assert p.rss_kb() - rss_before < 32 * 1024
        got = 0
        pattern_ok = True
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            if data[0] != got % 256 or data[-1] != (got + len(data) - 1) % 256:
                pattern_ok = False
            got += len(data)
    assert got == 64 * MiB and pattern_ok
    assert wait_output(m, r"^SENT ") is not None


def test_backpressure_client_to_a_member_that_does_not_read(tcp_members, proxy):
    p, _ = one_echo_proxy(tcp_members, proxy, mode="stall")
    rss_before = p.rss_kb()
    with connect(p.port, timeout=10) as s:
        s.settimeout(1.0)
        chunk = b"\0" * 65536
        sent = 0
        try:
            while sent < 64 * MiB:
                sent += s.send(chunk)
        except socket.timeout:
            pass
        assert sent < 40 * MiB, "the proxy kept accepting bytes the member never read"
        assert p.rss_kb() - rss_before < 32 * 1024
    tcp_members.kill_all()  # its unread data makes a reset: the proxy need not wait to stop
