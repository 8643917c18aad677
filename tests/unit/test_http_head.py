"""HTTP head glue (wsproxy.protocol.http_head and its C twin): the shared vectors, random
fields through both twins (C == Python), and the proxy's one-pass member request head
against the header-list functions it replaced (forwarding.py + serialize_request_head)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy import _speedups
from wsproxy.protocol import http1
from wsproxy.protocol import http_head as py_http_head
from wsproxy.protocol.cookies import without_cookie
from wsproxy.protocol.forwarding import TrustedProxies, forwarded_headers, strip_hop_by_hop
from wsproxy.proxy.http_exchange import member_request_head

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "http_head.json").read_text())


def implementations():
    yield pytest.param(py_http_head, id="py")
    try:
        from wsproxy._ext import http_head as c_http_head
    except ImportError:
        if not _speedups.NO_EXTENSIONS:
            raise  # a C build must have it
        return
    yield pytest.param(c_http_head, id="c")


TWINS = list(implementations())


def _bytes(text: str) -> bytes:
    return text.encode("latin-1")


def _pairs(rows) -> list[tuple[str, str]]:
    return [(a, b) for a, b in rows]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("case", VECTORS["scan_fields"], ids=lambda c: c["name"])
def test_scan_fields_vectors(twin, case):
    fields = [(_bytes(n), _bytes(v)) for n, v in case["fields"]]
    headers, names, problem, size = twin.scan_fields(fields)
    assert headers == _pairs(case["headers"])
    assert names == tuple(case["names"])
    assert problem == case["problem"]
    assert size == case["size"]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("case", VECTORS["rewrite_head"], ids=lambda c: c["name"])
def test_rewrite_head_vectors(twin, case):
    args = (case["start_line"], _pairs(case["headers"]), tuple(case["names"]), frozenset(case["drop"]),
            _pairs(case["tail"]), tuple(case["first"]) if case["first"] else None)
    if "error" in case:
        with pytest.raises(getattr(builtins, case["error"])) as info:
            twin.rewrite_head(*args)
        if "message" in case:
            assert str(info.value) == case["message"]
    else:
        assert twin.rewrite_head(*args) == _bytes(case["out"])


# -- differential: random fields, C == Python --------------------------------------------------------

_byte_text = st.binary(max_size=40)
_names = st.one_of(st.sampled_from([b"Host", b"Connection", b"X-Forwarded-For", b"upgrade", b"Content-Length"]),
                   st.binary(max_size=20))
_fields = st.lists(st.tuples(_names, _byte_text), max_size=12)


@settings(max_examples=300, deadline=None)
@given(fields=_fields)
def test_scan_fields_c_equals_python(fields):
    results = [twin.values[0].scan_fields(fields) for twin in TWINS]
    assert all(r == results[0] for r in results)


_str_fields = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=10)


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the same exception type and message in both twins
        return (type(exc).__name__, str(exc))


@settings(max_examples=300, deadline=None)
@given(headers=_str_fields, tail=_str_fields, drop_some=st.lists(st.integers(0, 9), max_size=4),
       first=st.none() | st.tuples(st.text(max_size=8), st.text(max_size=8)))
def test_rewrite_head_c_equals_python(headers, tail, drop_some, first):
    names = tuple(n.lower() for n, _ in headers)
    drop = frozenset(names[i] for i in drop_some if i < len(names))
    results = [_outcome(twin.values[0].rewrite_head, "GET / HTTP/1.1", headers, names, drop, tail, first)
               for twin in TWINS]
    assert all(r == results[0] for r in results)


def test_rewrite_head_names_must_match_headers():
    for twin in TWINS:
        with pytest.raises(ValueError):
            twin.values[0].rewrite_head("GET / HTTP/1.1", [("A", "1")], (), frozenset())


# -- the member request head in one pass == the header-list path it replaced ---------------------------

def _session(client_ip: str, trusted: list[str], proto: str = "http", bind: str = "127.0.0.1:8080"):
    ctx = SimpleNamespace(proto=proto, trusted=TrustedProxies(trusted), config=SimpleNamespace(bind=bind))
    return SimpleNamespace(ctx=ctx, client_ip=client_ip)


def _reference(session, head, *, upgrade=False, drop_cookie=None) -> bytes:
    """What wsproxy did before the one-pass head (commit 3fc6889), kept as the oracle."""
    ctx = session.ctx
    headers = strip_hop_by_hop(head.headers)
    if drop_cookie is not None:
        headers = without_cookie(headers, drop_cookie)
    if head.get("host") is None:
        headers.insert(0, ("Host", str(ctx.config.bind)))
    headers = forwarded_headers(headers, client_ip=session.client_ip, proto=ctx.proto, host=head.get("host"),
                                trusted=ctx.trusted.contains(session.client_ip))
    if upgrade:
        headers.append(("Connection", "Upgrade"))
        headers.append(("Upgrade", head.get("upgrade") or "websocket"))
    elif head.chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    return http1.serialize_request_head(head.method, head.target, headers)


def _parsed(raw: bytes) -> http1.RequestHead:
    return http1.RequestParser().feed(raw)[0]


HEADS = [
    b"GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=1.1.1.1\r\n"
    b"X-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Secret\r\n"
    b"X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.0\r\nCookie: a=1; wsp=abc; b=2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 9.9.9.9\r\n"
    b"x-forwarded-for: 8.8.8.8\r\nFORWARDED: for=8.8.8.8\r\n\r\n",
]


@pytest.mark.parametrize("raw", HEADS)
@pytest.mark.parametrize("client_ip,trusted", [("203.0.113.9", []), ("10.0.0.5", ["10.0.0.0/8"]),
                                                ("::ffff:10.0.0.5", ["10.0.0.0/8"]), ("2001:db8::1", [])])
@pytest.mark.parametrize("upgrade", [False, True])
@pytest.mark.parametrize("drop_cookie", [None, "wsp"])
def test_member_request_head_matches_the_list_path(raw, client_ip, trusted, upgrade, drop_cookie):
    session = _session(client_ip, trusted)
    head = _parsed(raw)
    assert member_request_head(session, head, upgrade=upgrade, drop_cookie=drop_cookie) == _reference(
        session, head, upgrade=upgrade, drop_cookie=drop_cookie)


def test_member_request_head_of_a_head_built_by_hand():
    session = _session("203.0.113.9", [], proto="https")
    head = http1.RequestHead("GET", "/x", "1.1", [("Host", "h"), ("Connection", "close")])
    out = member_request_head(session, head)
    assert out == _reference(session, head)
    assert b"Connection" not in out and b"X-Forwarded-Proto: https\r\n" in out


def test_response_head_for_client():
    rh = http1.ResponseParser().feed(
        b"HTTP/1.1 101 \r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\n"
        b"Sec-WebSocket-Accept: abc\r\n\r\n")[0]
    out = http1.response_head_for_client(rh, [("Upgrade", "websocket"), ("Connection", "Upgrade")])
    assert out == (b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n"
                   b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
