"""Fuzz the request-head path: bytes from a client (or a member) to the head the proxy forwards.

Input: byte 0 holds flags, byte 1 the split seed (``harness_support.split_points``), the rest
is the wire data. Flags: 0x01 member responses instead of client requests; 0x02 small limits;
0x04 the sticky cookie is dropped (``drop_cookie``); 0x08 the client is a trusted proxy;
0x10 ``feed_eof`` after the data (responses); 0x20 the response answers HEAD; 0x40 an inspect
route (Sec-WebSocket-Extensions dropped).

Checked for each input (an HttpError, HandshakeError or FrameError on the way is an expected
answer; anything else, or a failed assertion, is a bug):

- ``RequestParser`` / ``ResponseParser`` fed in the chosen chunks give the same events and
  the same error status as the data fed whole (default limits: with small ones a head that
  starts inside a chunked body is bounded by an estimate, exact to within 3 bytes);
- every request head goes the proxy's way (proxy/session.py, http_exchange.py, websocket.py):
  router host, hash keys, Origin policy, handshake validation, then ``member_request_head``.
  The forwarded head must never fail to serialize, must parse again as exactly one head with
  the same method, target and framing (Content-Length, chunked, upgrade), with no byte left
  over, and must carry the client's end-to-end headers unchanged: "never forward something
  that splits";
- every response head goes to the client as ``response_head_for_client`` writes it and must
  parse again with the same status and the framing the proxy chose;
- ``scan_fields`` / ``rewrite_head``: the C twin and the pure one agree (when the C one is built).

Run: ``python fuzz/fuzz_http_head.py -max_total_time=60 fuzz/corpus/http_head`` (``make fuzz``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from harness_support import run_atheris, split_points  # noqa: E402

RESPONSE, SMALL_LIMITS, DROP_COOKIE, TRUSTED, EOF, HEAD_REQUEST, INSPECT = 1, 2, 4, 8, 16, 32, 64
SMALL = {"max_head_bytes": 96, "max_headers": 4}
LIMIT_STATUSES = {414, 431}
STICKY_COOKIE = "wsp_srv"
ORIGINS = ("https://app.example.com", "https://*.example.org:8443", "null")
HASH_KEYS = ("source_ip", "path", "header:X-User", "cookie:sid", "query:room")
CLIENT_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # the RFC 6455 example key, for check_server_accept


def load() -> None:
    """Import what is checked (under atheris.instrument_imports when fuzzing)."""
    global http1, handshake, forwarding, http_exchange, router_module, keys, _speedups, errors
    global py_http_head, c_http_head, ROUTER, SESSIONS, EXTENSIONS
    from types import SimpleNamespace

    from wsproxy import _speedups, errors
    from wsproxy.balancing import keys
    from wsproxy.config.schema import RouteConfig
    from wsproxy.protocol import forwarding, handshake, http1
    from wsproxy.protocol import http_head as py_http_head
    from wsproxy.proxy import http_exchange
    from wsproxy.proxy.websocket import _EXTENSIONS as EXTENSIONS
    from wsproxy.routing import router as router_module

    try:
        from wsproxy._ext import http_head as c_http_head
    except ImportError:
        c_http_head = None
    ROUTER = router_module.Router([
        RouteConfig(index=0, pool="a", host="*.example.com", path_prefix="/api/"),
        RouteConfig(index=1, pool="b", host="[::1]", path="/ws"),
        RouteConfig(index=2, pool="c"),
    ])
    trusted = forwarding.TrustedProxies(["10.0.0.0/8", "::ffff:192.0.2.0/120"])
    SESSIONS = {}
    for is_trusted, ip in ((False, "203.0.113.9"), (True, "10.1.2.3")):
        ctx = SimpleNamespace(config=SimpleNamespace(bind="0.0.0.0:8080"), trusted=trusted, proto="http")
        SESSIONS[is_trusted] = SimpleNamespace(ctx=ctx, client_ip=ip)


# --- parsing --------------------------------------------------------------------------------------


def parse(parser, chunks: list[bytes], eof: bool) -> tuple[list, int | None]:
    """(events, error status or None), fed as the proxy feeds: nothing after an Upgrade (the
    rest of the stream is WebSocket; it is appended to the Upgrade's leftover here)."""
    events = []
    for i, chunk in enumerate(chunks):
        try:
            new = parser.feed(chunk)
        except errors.HttpError as exc:
            return events, exc.status
        events += new
        if new and isinstance(new[-1], http1.Upgrade):
            rest = b"".join(chunks[i + 1 :])
            events[-1] = http1.Upgrade(new[-1].leftover + rest)
            return events, None
    if eof:
        try:
            events += parser.feed_eof()
        except errors.HttpError as exc:
            return events, exc.status
    return events, None


def normalized(events: list) -> list:
    """Consecutive Body events merged: how a body is cut depends on the chunking."""
    out = []
    for ev in events:
        if isinstance(ev, http1.Body) and out and isinstance(out[-1], http1.Body):
            out[-1] = http1.Body(out[-1].data + ev.data)
        elif isinstance(ev, http1.Body) and not ev.data:
            continue
        else:
            out.append(ev)
    return out


def new_parser(flags: int):
    limits = SMALL if flags & SMALL_LIMITS else {}
    if flags & RESPONSE:
        parser = http1.ResponseParser(**limits)
        if flags & HEAD_REQUEST:
            parser.expect_head_response()
        return parser
    return http1.RequestParser(**limits)


# --- the proxy's way with a request head ----------------------------------------------------------


def end_to_end(headers, names, also_dropped: frozenset[str]) -> list[tuple[str, str]]:
    """The fields a proxy passes on unchanged: not hop-by-hop, not a forwarding claim, not
    Host (added when missing), Cookie (the sticky cookie is cut out) or ``also_dropped``."""
    hop = forwarding.hop_by_hop_names(headers, names)
    skip = hop | forwarding._CLIENT_CLAIMS | {"host", "cookie"} | also_dropped
    return [field for field, name in zip(headers, names) if name not in skip]


def check_request(head, flags: int) -> None:
    ROUTER.match(head.get("host"), head.path)
    router_module.request_host(head.get("host"))
    for hash_key in HASH_KEYS:
        keys.request_key(hash_key, client_ip="203.0.113.9", head=head)
    upgrade = head.is_upgrade and handshake.is_websocket_request(head)
    if head.is_upgrade and not upgrade:
        return  # answered 501 (session.py), never forwarded
    if upgrade:
        assert isinstance(handshake.origin_allowed(head.get("origin"), ORIGINS), bool)
        try:
            handshake.validate_client_handshake(head)
        except errors.HandshakeError as exc:
            assert exc.status in (400, 426), exc
            return
        handshake.accept_key(head.get("sec-websocket-key"))
    drop = EXTENSIONS if upgrade and flags & INSPECT else None
    session = SESSIONS[bool(flags & TRUSTED)]
    cookie = STICKY_COOKIE if flags & DROP_COOKIE else None
    # The proxy does not catch a ValueError here: a head it accepted must serialize.
    forwarded = http_exchange.member_request_head(session, head, upgrade=upgrade, drop_cookie=cookie, drop=drop)
    reparsed = http1.RequestParser(max_head_bytes=1 << 20, max_headers=1 << 16, max_uri_bytes=1 << 20)
    events = reparsed.feed(forwarded)  # an HttpError here is a bug: we forwarded it
    again = events[0]
    assert isinstance(again, http1.RequestHead), events
    assert (again.method, again.target, again.version) == (head.method, head.target, "1.1"), (again, head)
    assert again.content_length == head.content_length, (again, head)
    assert again.chunked == head.chunked, (again, head)
    assert again.is_upgrade == upgrade, (again, head)
    if upgrade:
        assert events[1:] == [http1.EndOfMessage([]), http1.Upgrade(b"")], events
    elif head.chunked or head.content_length:
        assert events[1:] == [] and not reparsed.in_head, events  # waiting for the body
    else:
        assert events[1:] == [http1.EndOfMessage([])], events
    assert len(again.get_all("host")) == 1, again
    also = frozenset(drop or ())
    assert end_to_end(again.headers, again.names, also) == end_to_end(head.headers, head.names, also), (again, head)
    compare_twins(head)


def compare_twins(head) -> None:
    """scan_fields and rewrite_head, C and pure, on this head's fields."""
    if c_http_head is None:
        return
    fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head.headers]
    assert c_http_head.scan_fields(fields) == py_http_head.scan_fields(fields)
    drop = forwarding.hop_by_hop_names(head.headers, head.names)
    args = ("GET / HTTP/1.1", head.headers, head.names, drop, [("X-Tail", "1")], ("Host", "h"))
    assert c_http_head.rewrite_head(*args) == py_http_head.rewrite_head(*args)


# --- the proxy's way with a response head ---------------------------------------------------------


def check_response(rh, flags: int) -> None:
    handshake.negotiated_rsv(rh)
    if rh.status == 101:
        try:
            handshake.check_server_accept(CLIENT_KEY, rh)
        except errors.HandshakeError as exc:
            assert exc.status == 502, exc
        return
    if rh.status < 200:  # relayed as is (http_exchange._deliver)
        interim = http1.serialize_response_head(rh.status, rh.reason, rh.headers)
        assert http1.ResponseParser().feed(interim)[0].status == rh.status
        return
    # http_exchange._response_head for an HTTP/1.1 GET (or HEAD) client
    answers_head = bool(flags & HEAD_REQUEST)
    tail = []
    if answers_head or rh.status in (204, 304):
        to_client = "none"
    elif rh.chunked:
        to_client = "chunked"
        tail.append(("Transfer-Encoding", "chunked"))
    elif rh.content_length is not None:
        to_client = "length"
    else:
        to_client = "close"
    if to_client == "close":
        tail.append(("Connection", "close"))
    data = http1.response_head_for_client(rh, tail)
    client = http1.ResponseParser(max_head_bytes=1 << 20, max_headers=1 << 16)
    if answers_head:
        client.expect_head_response()
    events = client.feed(data)
    again = events[0]
    assert isinstance(again, http1.ResponseHead), events
    assert again.status == rh.status, (again, rh)
    if to_client == "chunked":
        assert again.chunked and again.content_length is None, (again, rh)
    elif to_client == "length":
        assert again.content_length == rh.content_length and not again.chunked, (again, rh)
    elif to_client == "close":
        assert again.body_until_close and not again.keep_alive, (again, rh)


# --- one input ------------------------------------------------------------------------------------


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, wire = data[0], data[1], data[2:]
    eof = bool(flags & RESPONSE and flags & EOF)
    chunks = split_points(wire, seed)
    events, status = parse(new_parser(flags), chunks, eof)
    if not flags & SMALL_LIMITS:
        # The chunking never changes the outcome. (Events before an error are lost when the
        # data is fed whole: feed raises. So only the statuses are compared then. A head that
        # breaks a limit and a syntax rule may get either answer, 414/431 or 400, depending
        # on which one shows first: a limit is checked between feeds, llhttp inside one.)
        whole_events, whole_status = parse(new_parser(flags), [wire], eof)
        assert (status is None) == (whole_status is None), (status, whole_status)
        if status != whole_status:
            assert {status, whole_status} & LIMIT_STATUSES, (status, whole_status)
        if status is None:
            assert normalized(events) == normalized(whole_events), (events, whole_events)
    for ev in events:
        if isinstance(ev, http1.RequestHead):
            check_request(ev, flags)
        elif isinstance(ev, http1.ResponseHead):
            check_response(ev, flags)


if __name__ == "__main__":
    run_atheris(load, check)
