"""WebSocket violations after the upgrade (issue #7): the violating side gets the violation's
Close from the proxy (1002 protocol error, 1007 invalid UTF-8 on a validate_utf8 route, 1009
over max_message_size / max_frame_size), the other side a Close of the proxy's own (the member
1001 when the client misbehaved, the client 1011 when the member did); each is one log line
and a ``wsproxy_rejections_total`` count; everyone else is still served.

One proxy (with its admin port, for /metrics) and two members serve the whole module: the
websockets echo member (servers/ws_echo.py, which records the Close code it received) and a
raw recording member (below) that keeps every byte it received, to show what was, and was
not, forwarded. Clients are raw sockets, so they can break the rules. Track routes and
inspect routes (relay = "inspect") are both covered.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from .support import (
    HOST,
    FrameParser,
    build_frame,
    close_code_of,
    close_payload,
    raw_ws_connect,
    recv_frames_until,
    rejection_deltas,
    rejections,
    site_conf,
    start_member,
    start_proxy,
    port_open,
    wait_until,
)
from .test_relay_edges import switch

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
LIMIT_MESSAGE, LIMIT_FRAME = 1000, 500


class RecordingMember:
    """A raw WebSocket member for any number of connections. Each connection's record holds
    the bytes received after the 101 (``raw``), the frames parsed from them (unmasked) and the
    Close code received. Data frames are echoed as they came (fragmentation kept), a Ping is
    answered, a Close is echoed and the connection closed. On a path under /misbehave/ the
    first data frame is answered with a masked frame instead: a server must not mask (1002)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.records: list[dict] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def record(self, path: str, timeout: float = 10.0) -> dict | None:
        """The finished record of the connection made for ``path``."""
        return wait_until(lambda: next((r for r in self.records if r["path"] == path and r["done"]), None), timeout)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        record = {"path": None, "raw": bytearray(), "frames": [], "close": None, "done": False}
        with conn:
            try:
                conn.settimeout(10)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                head_text = head.decode("latin-1")
                record["path"] = urlsplit(head_text.split(" ")[1]).path
                self.records.append(record)
                switch(conn, head_text)
                self._frames(conn, record, rest)
            except OSError:
                pass
            finally:
                record["done"] = True

    def _frames(self, conn: socket.socket, record: dict, data: bytes) -> None:
        parser = FrameParser()
        misbehave = record["path"].startswith("/misbehave/")
        while True:
            record["raw"] += data
            for opcode, fin, payload, _n in parser.feed(data):
                record["frames"].append((opcode, fin, payload))
                if opcode == CLOSE:
                    record["close"] = close_code_of((opcode, fin, payload))
                    conn.sendall(build_frame(CLOSE, payload, mask=False))
                    return
                if opcode == PING:
                    conn.sendall(build_frame(PONG, payload, mask=False))
                elif opcode in (TEXT, BINARY, CONT):
                    conn.sendall(build_frame(opcode, payload, fin=fin, mask=misbehave))
            data = conn.recv(65536)
            if not data:
                return

    def close(self) -> None:
        self.sock.close()


class Site:
    def __init__(self, proxy, echo, recorder, admin: int) -> None:
        self.proxy, self.echo, self.recorder, self.admin = proxy, echo, recorder, admin

    @property
    def port(self) -> int:
        return self.proxy.ports["public"]


ROUTES = [  # public.routes[i]
    {"path_prefix": "/utf8/", "pool": "echo", "validate_utf8": True},  # 0
    {"path_prefix": "/small/", "pool": "echo", "max_message_size": LIMIT_MESSAGE},  # 1
    {"path_prefix": "/frame/", "pool": "echo", "max_frame_size": LIMIT_FRAME},  # 2
    {"path_prefix": "/inspect/", "pool": "echo", "relay": "inspect", "validate_utf8": True,  # 3
     "max_message_size": LIMIT_MESSAGE, "max_frame_size": LIMIT_FRAME},
    {"path_prefix": "/misbehave/inspect/", "pool": "rec", "relay": "inspect"},  # 4
    {"path_prefix": "/rec-small/", "pool": "rec", "max_message_size": LIMIT_MESSAGE},  # 5
    {"pool": "rec", "path_prefix": "/misbehave/"},  # 6
    {"pool": "rec", "path_prefix": "/rec/"},  # 7
    {"pool": "echo"},  # 8: the defaults
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("violations")
    echo = start_member("ws_echo.py", "echo", tmp, record=True)
    recorder = RecordingMember()
    conf = site_conf({"echo": [echo.addr], "rec": [recorder.addr]}, routes=ROUTES,
                     server={"admin": f"{HOST}:$PORT9"})
    proxy = start_proxy(conf, tmp)
    admin = int(proxy.config["server"]["admin"].rsplit(":", 1)[1])
    try:
        assert wait_until(lambda: port_open(admin), 10), proxy.stderr_text()[-3000:]
        yield Site(proxy, echo, recorder, admin)
    finally:
        proxy.stop()
        echo.kill()
        recorder.close()


@pytest.fixture(scope="module")
def bystander(site):
    """A well-behaved client on the default route, open for the whole module: after each
    test it must still get its echo."""
    s, leftover = raw_ws_connect(site.port, "/bystander")
    parser = FrameParser()
    parser.feed(leftover)
    count = iter(range(1_000_000))

    def check() -> None:
        text = b"still here %d" % next(count)
        s.sendall(build_frame(TEXT, text))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == TEXT, timeout=5)
        assert frame is not None and frame[2] == text, seen

    check()
    yield check
    s.close()


@pytest.fixture
def counted(site):
    """Call to get the rejection counts that changed since the test began (after they settle)."""
    before = rejections(site.admin)

    def changed(expected: dict) -> dict:
        if not expected:
            time.sleep(1.2)  # a worker flushes its counts every second (node/metrics.py)
        found = wait_until(lambda: (lambda d: (d,) if d == expected else None)(
            rejection_deltas(rejections(site.admin), before)), 5)
        return found[0] if found else rejection_deltas(rejections(site.admin), before)

    return changed


def violate(port: int, path: str, *sends: bytes, echo_first: bytes | None = None):
    """Open a WebSocket on ``path``; with ``echo_first``, send that text and wait for its echo;
    then send each of ``sends`` (a write each) and read until a Close. Returns (Close code,
    [(opcode, payload) of the other frames seen, the echo included])."""
    s, leftover = raw_ws_connect(port, path)
    with s:
        parser = FrameParser()
        seen = parser.feed(leftover)
        if echo_first is not None:
            s.sendall(build_frame(TEXT, echo_first))
            frame, more = recv_frames_until(s, parser, lambda f: f[0] == TEXT, timeout=5)
            assert frame is not None and frame[2] == echo_first, more
            seen += more
        for data in sends:
            s.sendall(data)
        if not any(f[0] == CLOSE for f in seen):
            _frame, more = recv_frames_until(s, parser, lambda f: f[0] == CLOSE, timeout=10)
            seen += more
    closes = [f for f in seen if f[0] == CLOSE]
    assert closes, f"no Close frame, got {seen}"
    return close_code_of(closes[0]), [(f[0], f[2]) for f in seen if f[0] != CLOSE]


def access_line(site, path: str) -> dict:
    line = site.proxy.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "ws" and l.get("path") == path)
    assert line is not None, f"no access line for {path}"
    return line


def violation_log(site, path: str, code: int) -> dict:
    """The violation's log line, of the connection ``path`` was opened on (the access line's client)."""
    access = access_line(site, path)
    line = site.proxy.wait_log(lambda l: l.get("msg") == "websocket protocol violation"
                               and l.get("client") == access["client"])
    assert line is not None, f"no violation log line for {path}"
    assert (line["level"], line["listener"], line["route"], line["code"]) == ("info", "public", access["route"], code), line
    return line


# ---- the client breaks the rules ------------------------------------------------------------------


BAD_FRAMES = {
    "unmasked": build_frame(TEXT, b"not masked", mask=False),
    "opcode": build_frame(0x3, b"reserved opcode"),
    "rsv": build_frame(TEXT, b"no extension was negotiated", rsv=0x20),
    "continuation": build_frame(CONT, b"no message to continue"),
}


@pytest.mark.parametrize("prefix", ["/utf8/", "/inspect/"])
@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_client_protocol_error_is_1002_and_the_member_gets_1001(site, bystander, counted, prefix, case):
    path = f"{prefix}{case}"
    code, data = violate(site.port, path, BAD_FRAMES[case], echo_first=b"fine")
    assert code == 1002 and data == [(TEXT, b"fine")]
    record = site.echo.wait_record(lambda r: r["path"] == path)
    assert record is not None and record["rcvd_code"] == 1001 and record["messages"] == 1, record
    assert record["rcvd_reason"] == "client violated the protocol", record
    log = violation_log(site, path, 1002)
    assert log["side"] == "client" and log["reason"], log
    line = access_line(site, path)
    assert (line["close_code"], line["closed_by"]) == (1002, "proxy"), line
    assert line["reason"].startswith("client protocol violation: "), line
    assert counted({("public", "ws_protocol"): 1.0}) == {("public", "ws_protocol"): 1.0}
    bystander()


@pytest.mark.parametrize("prefix", ["/utf8/", "/inspect/"])
def test_invalid_utf8_is_1007_on_a_route_that_asks(site, bystander, counted, prefix):
    path = f"{prefix}bad-text"
    good = "né".encode()
    code, data = violate(site.port, path, build_frame(TEXT, b"ok \xc3", fin=False),
                         build_frame(PING, b"between") + build_frame(CONT, b"\x28 broken"), echo_first=good)
    assert code == 1007 and data[0] == (TEXT, good)
    record = site.echo.wait_record(lambda r: r["path"] == path)
    assert record is not None and record["rcvd_code"] == 1001 and record["messages"] == 1, record
    assert violation_log(site, path, 1007)["reason"] == "invalid UTF-8 in a text message"
    assert counted({("public", "ws_utf8"): 1.0}) == {("public", "ws_utf8"): 1.0}
    bystander()


def test_invalid_utf8_passes_untouched_without_validate_utf8(site, bystander, counted):
    """On a route without validate_utf8 the proxy does not read text: the member gets the
    very bytes the client sent (and answers as it likes: this one echoes)."""
    frame = build_frame(TEXT, b"\xff\xfe not UTF-8 \xc3")
    s, leftover = raw_ws_connect(site.port, "/rec/untouched")
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(frame)
        echoed, seen = recv_frames_until(s, parser, lambda f: f[0] == TEXT, timeout=5)
        assert echoed is not None and echoed[2] == b"\xff\xfe not UTF-8 \xc3", seen
        s.sendall(build_frame(CLOSE, close_payload(1000)))
        closed, seen = recv_frames_until(s, parser, lambda f: f[0] == CLOSE, timeout=5)
        assert closed is not None and close_code_of(closed) == 1000, seen
    record = site.recorder.record("/rec/untouched")
    assert record is not None and bytes(record["raw"]).startswith(frame), record
    assert counted({}) == {}
    bystander()


@pytest.mark.parametrize("route", ["/small/", "/inspect/"])
def test_a_fragmented_message_over_max_message_size_is_1009(site, bystander, counted, route):
    path = f"{route}fragments"  # three fragments within max_frame_size, together over max_message_size
    first = build_frame(TEXT, b"a" * 400, fin=False) + build_frame(CONT, b"b" * 400, fin=False)
    code, data = violate(site.port, path, first + build_frame(PING, b"p") + build_frame(CONT, b"c" * 400))
    assert code == 1009
    record = site.echo.wait_record(lambda r: r["path"] == path)
    assert record is not None and record["rcvd_code"] == 1001 and record["messages"] == 0, record
    log = violation_log(site, path, 1009)
    assert log["reason"].startswith("message of at least 1200 bytes over the 1000 byte limit"), log
    assert counted({("public", "ws_too_big"): 1.0}) == {("public", "ws_too_big"): 1.0}
    bystander()


def test_the_member_never_gets_the_frame_over_the_limit(site, bystander, counted):
    """What the member received: the first fragment, the ping, then our Close 1001, nothing of
    the fragment that took the message over the limit. Its echo of the first fragment still
    reached the client, before the 1009."""
    first = build_frame(TEXT, b"a" * 600, fin=False)
    ping = build_frame(PING, b"p")
    over = build_frame(CONT, b"b" * 600)
    code, data = violate(site.port, "/rec-small/over", first + ping + over)
    assert code == 1009
    assert data == [(TEXT, b"a" * 600), (PONG, b"p")]
    record = site.recorder.record("/rec-small/over")
    assert record is not None
    assert record["frames"][:2] == [(TEXT, False, b"a" * 600), (PING, True, b"p")], record["frames"]
    assert record["frames"][2][0] == CLOSE and record["close"] == 1001 and len(record["frames"]) == 3
    assert bytes(record["raw"]).startswith(first + ping)
    assert len(record["raw"]) == len(first) + len(ping) + 6 + 2 + len("client violated the protocol")
    assert counted({("public", "ws_too_big"): 1.0}) == {("public", "ws_too_big"): 1.0}
    bystander()


@pytest.mark.parametrize("route", ["/frame/", "/inspect/"])
def test_one_frame_over_max_frame_size_is_1009(site, bystander, counted, route):
    path = f"{route}one-frame"
    code, _data = violate(site.port, path, build_frame(BINARY, b"x" * (LIMIT_FRAME + 1)))
    assert code == 1009
    record = site.echo.wait_record(lambda r: r["path"] == path)
    assert record is not None and record["rcvd_code"] == 1001 and record["messages"] == 0, record
    log = violation_log(site, path, 1009)
    assert log["reason"] == "frame of 501 bytes over the 500 byte limit", log
    assert counted({("public", "ws_too_big"): 1.0}) == {("public", "ws_too_big"): 1.0}
    bystander()


@pytest.mark.parametrize(("path", "size"), [("/inspect/within", LIMIT_FRAME), ("/small/within", LIMIT_MESSAGE)])
def test_messages_at_the_limits_pass(site, bystander, counted, path, size):
    """A text message exactly at the limit, fragmented inside a character, the text checked
    (inspect): nothing is refused. The limits apply both ways, so the member's echo (one
    frame) must be within them too: on /inspect/ a message is one frame's size at most."""
    text = ("é".encode() * size)[:size]
    s, leftover = raw_ws_connect(site.port, path)
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(TEXT, text[:size // 2 - 1], fin=False) + build_frame(CONT, text[size // 2 - 1:]))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == TEXT, timeout=5)
        assert frame is not None and frame[2] == text, seen
        s.sendall(build_frame(CLOSE, close_payload(1000)))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == CLOSE, timeout=5)
        assert frame is not None and close_code_of(frame) == 1000, seen
    assert counted({}) == {}
    bystander()


# ---- the member breaks the rules ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/misbehave/track", "/misbehave/inspect/x"])
def test_member_protocol_error_member_gets_1002_client_gets_1011(site, bystander, counted, path):
    s, leftover = raw_ws_connect(site.port, path)
    with s:
        parser = FrameParser()
        parser.feed(leftover)
        s.sendall(build_frame(TEXT, b"please answer"))
        frame, seen = recv_frames_until(s, parser, lambda f: f[0] == CLOSE, timeout=5)
        assert frame is not None and close_code_of(frame) == 1011, seen
        assert frame[2][2:] == b"upstream protocol error"
        assert [f for f in seen if f[0] != CLOSE] == []  # nothing of the bad frame
        # the client answers the Close: its leg is done, the proxy closes it at once
        started = time.monotonic()
        s.sendall(build_frame(CLOSE, close_payload(1011)))
        s.settimeout(5)
        assert s.recv(65536) == b""
        assert time.monotonic() - started < 1.5
    record = site.recorder.record(path)
    assert record is not None and record["close"] == 1002, record
    log = violation_log(site, path, 1002)
    assert log["side"] == "member" and log["reason"] == "frame masked", log
    line = access_line(site, path)
    assert (line["close_code"], line["closed_by"]) == (1002, "proxy"), line
    assert line["reason"] == "member protocol violation: frame masked", line
    assert counted({("public", "ws_protocol"): 1.0}) == {("public", "ws_protocol"): 1.0}
    bystander()


# ---- raw routes ----------------------------------------------------------------------------------


def test_a_pools_limits_on_its_raw_route_are_reported_once(members, proxy):
    """A raw relay sees no frames: the pool's limits are not applied there (one WARNING per
    route), and a message over them passes."""
    m = members.ws("raw")
    p = proxy(site_conf({"ws": {"members": [m.addr], "max_message_size": "1KiB", "validate_utf8": True}},
                        routes=[{"path_prefix": "/raw/", "pool": "ws", "relay": "raw"}]))
    for i in range(2):
        s, leftover = raw_ws_connect(p.port, f"/raw/{i}")
        with s:
            parser = FrameParser()
            parser.feed(leftover)
            s.sendall(build_frame(BINARY, b"x" * 2000))
            frame, seen = recv_frames_until(s, parser, lambda f: f[0] == BINARY, timeout=5)
            assert frame is not None and len(frame[2]) == 2000, seen
    warnings = [l for l in p.logs() if l.get("level") == "warning" and "ignored" in l.get("msg", "")
                and l.get("route") == "public.routes[0]"]
    assert len(warnings) == 1 and warnings[0]["max_message_size"] == 1024 and warnings[0]["validate_utf8"], warnings
