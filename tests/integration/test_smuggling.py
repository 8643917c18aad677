"""Hostile and broken request heads against a running proxy: every smuggling vector of
tests/vectors/smuggling/ gets exactly one 400 and a closed connection, the member never sees
a byte of it, one log line says why, ``wsproxy_rejections_total{reason="bad_request"}`` goes
up by exactly one, and the next client on the same listener is served. Then the other head
refusals (414, 431, 505, a malformed WebSocket handshake, 408, a silent client) with their
reasons.

The member is a raw TCP recorder in this process: it keeps every byte of every connection
the proxy opens to it, so "never forwarded" is checked on the wire, not on a parsed request.
One proxy serves the whole module (each test reads counter deltas and its own log lines).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from .support import (HOST, connect, port_open, read_response, read_until_closed, rejection_deltas, rejections,
                      site_conf, start_proxy, wait_until)

VECTORS = sorted((Path(__file__).parents[1] / "vectors" / "smuggling").glob("*.http"))


class Recorder:
    """A member that records every connection's bytes and answers each request head with
    200 and ``Connection: close`` (so the proxy never reuses a member connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: list[bytearray] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                record = bytearray()
                self.conns.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: bytearray) -> None:
        answered = False
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    with self.lock:
                        record += data
                    if not answered and b"\r\n\r\n" in record:
                        answered = True
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nrecorded")
            except OSError:
                return

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return [bytes(c) for c in self.conns]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """(proxy, recorder, admin port): one http listener "public" in front of the recorder."""
    recorder = Recorder()
    tmp = tmp_path_factory.mktemp("smuggling")
    conf = site_conf({"web": [recorder.addr]}, server={"admin": f"{HOST}:$PORT9"},
                     listener={"head_timeout": "1s", "max_uri_bytes": 256, "max_head_bytes": 1024})
    p = start_proxy(conf, tmp)
    admin = int(p.config["server"]["admin"].rsplit(":", 1)[1])
    try:
        assert wait_until(lambda: port_open(admin), 10), p.stderr_text()[-3000:]
        yield p, recorder, admin
    finally:
        p.stop()
        recorder.close()


def refused_lines(p, client: str) -> list[dict]:
    return [r for r in p.logs() if r.get("rejection") and r.get("client") == client]


def send_and_read_all(port: int, data: bytes) -> tuple[str, bytes]:
    """Send ``data`` (ignoring a reset once the proxy stopped reading), then read everything
    until the proxy closes. Returns (our client address as the proxy logs it, the bytes)."""
    with connect(port) as s:
        client = "%s:%d" % s.getsockname()[:2]
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return client, read_until_closed(s, timeout=5)


def check_served(p, recorder: Recorder, path: str) -> None:
    """A healthy client on the same listener gets the member's answer, and the member saw
    exactly that request on one new connection."""
    before = len(recorder.snapshot())
    with connect(p.port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        with s.makefile("rb") as f:
            r = read_response(f)
    assert r.status == 200 and r.body == b"recorded"
    seen = recorder.snapshot()
    assert len(seen) == before + 1
    assert seen[-1].startswith(f"GET {path} HTTP/1.1\r\n".encode())


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.stem)
def test_smuggling_vector_is_refused_and_never_forwarded(edge, vector):
    p, recorder, admin = edge
    seen_before = recorder.snapshot()
    counts_before = rejections(admin)

    client, answer = send_and_read_all(p.port, vector.read_bytes())

    # Exactly one answer, a 400 with Connection: close, then the proxy closed.
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:300]
    assert b"\r\nConnection: close" in head
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                 .split(b":")[1])
    assert len(body) == length, "more than one answer (or trailing bytes) after the 400"
    # Nothing reached the member: no connection, no byte.
    assert recorder.snapshot() == seen_before
    # One log line, naming the listener, the client and the reason.
    line = p.wait_log(lambda r: r.get("rejection") and r.get("client") == client)
    assert line is not None, p.stderr_text()[-2000:]
    assert (line["msg"], line["listener"], line["rejection"], line["status"]) == (
        "request refused", "public", "bad_request", 400)
    assert len(refused_lines(p, client)) == 1
    # The counter: +1 for bad_request, nothing else.
    assert rejection_deltas(rejections(admin), counts_before) == {("public", "bad_request"): 1}
    # The proxy serves the next client; the smuggled request never shows up anywhere.
    check_served(p, recorder, f"/after-{vector.stem}")
    assert not any(b"smuggled" in c or b"/%s " % vector.stem.encode() in c for c in recorder.snapshot())


# --- the other head refusals ---------------------------------------------------------------------

@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"GET /" + b"u" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "too_large"),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 1100 + b"\r\n\r\n", 431, "too_large"),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, "bad_request"),
    (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, "bad_request"),
], ids=["414-uri", "431-head", "505-version", "400-websocket-key"])
def test_other_head_refusals_are_counted(edge, data, status, reason):
    p, recorder, admin = edge
    seen_before = recorder.snapshot()
    counts_before = rejections(admin)
    client, answer = send_and_read_all(p.port, data)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert recorder.snapshot() == seen_before
    line = p.wait_log(lambda r: r.get("rejection") and r.get("client") == client)
    assert line is not None and (line["rejection"], line["status"]) == (reason, status)
    assert rejection_deltas(rejections(admin), counts_before) == {("public", reason): 1}
    check_served(p, recorder, f"/after-{status}")


def test_head_timeout_408_for_a_partial_head(edge):
    p, recorder, admin = edge
    counts_before = rejections(admin)
    with connect(p.port) as s:
        client = "%s:%d" % s.getsockname()[:2]
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        started = time.monotonic()
        answer = read_until_closed(s, timeout=5)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
    assert 0.7 < took < 4, took
    line = p.wait_log(lambda r: r.get("rejection") and r.get("client") == client)
    assert line is not None and (line["msg"], line["rejection"], line["status"]) == (
        "request refused", "head_timeout", 408)
    assert rejection_deltas(rejections(admin), counts_before) == {("public", "head_timeout"): 1}
    check_served(p, recorder, "/after-408")


def test_head_timeout_closes_a_silent_client_without_an_answer(edge):
    p, recorder, admin = edge
    counts_before = rejections(admin)
    with connect(p.port) as s:
        client = "%s:%d" % s.getsockname()[:2]
        started = time.monotonic()
        answer = read_until_closed(s, timeout=5)
        took = time.monotonic() - started
    assert answer == b"" and 0.7 < took < 4, (answer, took)
    line = p.wait_log(lambda r: r.get("rejection") and r.get("client") == client)
    assert line is not None and (line["msg"], line["listener"], line["rejection"]) == (
        "connection closed without a request", "public", "head_timeout")
    assert rejection_deltas(rejections(admin), counts_before) == {("public", "head_timeout"): 1}
    check_served(p, recorder, "/after-silence")
