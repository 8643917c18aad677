"""Relay edge cases: frames pipelined with the handshake, idle timeout, raw mode on member
loss, a member that breaks the protocol, a member whose 101 is wrong, and a member that
refuses the upgrade with a plain HTTP answer."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading

import pytest

from .support import (
    HOST,
    FrameParser,
    build_frame,
    close_code_of,
    connect,
    raw_ws_connect,
    read_response,
    recv_frames_until,
    site_conf,
    ws_handshake_request,
    ws_key,
)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_of(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


class ScriptedMember:
    """A one-connection raw TCP member: reads a head, then runs ``script(conn, head)``."""

    def __init__(self, script) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.received = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            self.received += rest
            try:
                self.script(conn, head.decode("latin-1"))
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def key_of(head: str) -> str:
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            return value.strip()
    raise AssertionError("no key in " + head)


def switch(conn, head: str, accept: str | None = None) -> None:
    accept = accept or accept_of(key_of(head))
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())


@pytest.fixture
def scripted():
    made = []

    def factory(script):
        m = ScriptedMember(script)
        made.append(m)
        return m

    yield factory
    for m in made:
        m.close()


def test_frames_pipelined_with_the_handshake_are_relayed(members, proxy):
    """A client that sends its first frames in the same write as the upgrade head."""
    m = members.ws("w")
    p = proxy(site_conf({"ws": [m.addr]}))
    s = connect(p.port)
    with s:
        s.sendall(ws_handshake_request("/echo", key=ws_key())
                  + build_frame(0x1, b"first") + build_frame(0x2, b"second"))
        parser = FrameParser()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        got = parser.feed(rest)
        if not any(f[2] == b"second" for f in got):
            frame, seen = recv_frames_until(s, parser, lambda f: f[2] == b"second", timeout=5)
            assert frame is not None, f"echo never came back: {got + seen}"
            got += seen
        assert [(f[0], f[2]) for f in got if f[0] in (1, 2)] == [(1, b"first"), (2, b"second")]


def test_ws_idle_timeout_closes_both_legs_with_1001(members, proxy):
    m = members.ws("w")
    p = proxy(site_conf({"ws": {"members": [m.addr], "ws_idle_timeout": "1s"}}))
    s, leftover = raw_ws_connect(p.port, "/idle")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == 0x8, timeout=5)
        assert frame is not None, f"no Close frame after the idle timeout, got {seen}"
        assert close_code_of(frame) == 1001
    rec = m.wait_record(lambda r: r["path"] == "/idle", timeout=10)
    assert rec is not None and rec["rcvd_code"] == 1001, rec
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws")
    assert log is not None and log["closed_by"] == "proxy" and "idle" in log["reason"], log


def test_raw_relay_member_killed_closes_client_without_frame(members, proxy):
    m = members.ws("w")
    p = proxy(site_conf({"ws": {"members": [m.addr], "relay": "raw"}}))
    s, leftover = raw_ws_connect(p.port, "/echo")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(0x1, b"ping?"))
        frame, _ = recv_frames_until(s, parser, lambda f: f[0] == 0x1, timeout=5)
        assert frame is not None and frame[2] == b"ping?"
        m.kill()
        frame, seen = recv_frames_until(s, parser, lambda f: True, timeout=5)
        assert frame is None, f"raw mode cannot inject frames, got {seen}"
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws")
    assert log is not None and log["frames_in"] is None and log["closed_by"] == "member", log


def test_member_protocol_violation_gives_member_1002_and_client_1011(proxy, scripted):
    """The member is told what it did wrong (1002); the client, which did nothing wrong, gets
    a server error (1011) in place of the bad frame."""
    got = {}

    def script(conn, head):
        switch(conn, head)
        conn.sendall(build_frame(0x1, b"masked by a server", mask=True))  # servers must not mask
        frame, _seen = recv_frames_until(conn, FrameParser(), lambda f: f[0] == 0x8, timeout=5)
        got["close"] = close_code_of(frame) if frame is not None else None

    m = scripted(script)
    p = proxy(site_conf({"ws": [m.addr]}))
    s, leftover = raw_ws_connect(p.port, "/")
    with s:
        parser = FrameParser()
        seen = parser.feed(leftover)
        if not seen:
            _frame, seen = recv_frames_until(s, parser, lambda f: f[0] in (0x1, 0x8), timeout=5)
        frame = seen[0] if seen else None
        assert frame is not None and frame[0] == 0x8, f"expected a Close, got {seen}"
        assert close_code_of(frame) == 1011
    m.thread.join(8)
    assert got.get("close") == 1002, got


def test_member_101_with_wrong_accept_is_502(proxy, scripted):
    m = scripted(lambda conn, head: switch(conn, head, accept="d3JvbmcgYWNjZXB0IGtleSE="))
    p = proxy(site_conf({"ws": [m.addr]}))
    s = connect(p.port)
    with s:
        s.sendall(ws_handshake_request("/", key=ws_key()))
        resp = read_response(s.makefile("rb"))
    assert resp.status == 502, resp
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("status") == 502)
    assert log is not None and "Accept" in log["reason"], log


def test_member_refusing_the_upgrade_is_relayed_as_http(proxy, scripted):
    body = b"no websockets here"

    def script(conn, head):
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    m = scripted(script)
    p = proxy(site_conf({"ws": [m.addr]}))
    s = connect(p.port)
    with s:
        s.sendall(ws_handshake_request("/", key=ws_key()))
        resp = read_response(s.makefile("rb"))
    assert resp.status == 403 and resp.body == body, resp


def test_member_frames_sent_with_the_101_are_relayed(proxy, scripted):
    """A member that writes its first frame in the same packet as the 101."""
    def script(conn, head):
        key = key_of(head)
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_of(key)}\r\n\r\n").encode()
                     + build_frame(0x1, b"hello from the member", mask=False))
        conn.settimeout(5)
        while conn.recv(65536):
            pass

    m = scripted(script)
    p = proxy(site_conf({"ws": [m.addr]}))
    s, leftover = raw_ws_connect(p.port, "/")
    with s:
        parser = FrameParser()
        got = parser.feed(leftover)
        if not got:
            frame, got = recv_frames_until(s, parser, lambda f: True, timeout=5)
        assert got and got[0][0] == 0x1 and got[0][2] == b"hello from the member", got


def test_client_half_close_during_handshake_ends_the_session(proxy, scripted):
    """A client sends its upgrade and at once shuts its write side, while the member takes
    its time to answer: the EOF arrives before the relay exists. The member must still get
    a masked Close 1001 and the session must end, not wait for the idle timeout."""
    import time

    got = {}

    def script(conn, head):
        time.sleep(0.5)  # the client's FIN reaches the proxy before the 101 does
        switch(conn, head)
        parser = FrameParser()
        frame, _seen = recv_frames_until(conn, parser, lambda f: f[0] == 0x8, timeout=5)
        got["close"] = close_code_of(frame) if frame is not None else None

    m = scripted(script)
    p = proxy(site_conf({"ws": [m.addr]}))
    s = connect(p.port)
    with s:
        s.sendall(ws_handshake_request("/halfclosed", key=ws_key()))
        s.shutdown(socket.SHUT_WR)
        buf = b""
        s.settimeout(8)
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
        assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
    m.thread.join(8)
    assert got.get("close") == 1001, got
    log = p.wait_log(lambda r: r.get("type") == "access" and r.get("kind") == "ws", timeout=10)
    assert log is not None and log["closed_by"] == "client", log
