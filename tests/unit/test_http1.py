"""wsproxy.protocol.http1: tests/vectors/http_heads.json fed whole, byte by byte and split in
two at every position, plus the parser behaviours the vectors cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsproxy.errors import HttpError
from wsproxy.protocol.http1 import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Upgrade,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
    simple_response,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "http_heads.json").read_text())
REQUESTS = VECTORS["requests"]
RESPONSES = VECTORS["responses"]


def _raw(vector: dict) -> bytes:
    return vector["data"].encode("latin-1")


def _make(kind: str, vector: dict) -> RequestParser | ResponseParser:
    limits = vector.get("limits", {})
    if kind == "request":
        return RequestParser(**limits)
    parser = ResponseParser(**limits)
    if vector.get("head_request"):
        parser.expect_head_response()
    return parser


def run(kind: str, vector: dict, pieces: list[bytes]) -> list:
    """Feed the pieces like a connection would: after an Upgrade, the rest is leftover."""
    parser = _make(kind, vector)
    events: list = []
    for i, piece in enumerate(pieces):
        new = parser.feed(piece)
        events.extend(new)
        if new and isinstance(new[-1], Upgrade):
            events[-1] = Upgrade(new[-1].leftover + b"".join(pieces[i + 1 :]))
            break
    if vector.get("eof"):
        events.extend(parser.feed_eof())
    return events


def normalize(events: list) -> list:
    """Events as JSON-like lists, consecutive bodies merged (chunking must not matter)."""
    out: list = []
    for event in events:
        if isinstance(event, Body):
            if out and out[-1][0] == "body":
                out[-1][1] += event.data.decode("latin-1")
            else:
                out.append(["body", event.data.decode("latin-1")])
        elif isinstance(event, EndOfMessage):
            out.append(["end", [list(t) for t in event.trailers]])
        elif isinstance(event, Upgrade):
            out.append(["upgrade", event.leftover.decode("latin-1")])
        else:
            out.append(["head", event])
    return out


def check(kind: str, vector: dict, pieces: list[bytes]) -> None:
    expect = vector["expect"]
    if "status" in expect:
        with pytest.raises(HttpError) as info:
            run(kind, vector, pieces)
        assert info.value.status == expect["status"], info.value
        assert expect["reason"] in info.value.reason
        return
    got = normalize(run(kind, vector, pieces))
    want = expect["events"]
    assert [e[0] for e in got] == [e[0] for e in want]
    for (kind_got, value), (_, wanted) in zip(got, want):
        if kind_got == "head":
            for name, expected in wanted.items():
                actual = getattr(value, name)
                if name == "headers":
                    actual = [list(h) for h in actual]
                assert actual == expected, (name, value)
        else:
            assert value == wanted


CASES = [("request", v) for v in REQUESTS] + [("response", v) for v in RESPONSES]
IDS = [f"{kind}:{v['name']}" for kind, v in CASES]


@pytest.mark.parametrize(("kind", "vector"), CASES, ids=IDS)
def test_vector_whole(kind, vector):
    check(kind, vector, [_raw(vector)])


@pytest.mark.parametrize(("kind", "vector"), CASES, ids=IDS)
def test_vector_byte_by_byte(kind, vector):
    data = _raw(vector)
    check(kind, vector, [data[i : i + 1] for i in range(len(data))])


@pytest.mark.parametrize(("kind", "vector"), CASES, ids=IDS)
def test_vector_split_in_two(kind, vector):
    data = _raw(vector)
    for cut in range(1, len(data)):
        check(kind, vector, [data[:cut], data[cut:]])


NOTED = [(kind, v) for kind, v in CASES if "llhttp" in v]


@pytest.mark.parametrize(("kind", "vector"), NOTED, ids=[f"{kind}:{v['name']}" for kind, v in NOTED])
def test_llhttp_notes_still_hold(kind, vector):
    # If an httptools upgrade changes what llhttp does alone, the notes (and our reliance on
    # them) must be reviewed.
    cls = httptools.HttpRequestParser if kind == "request" else httptools.HttpResponseParser
    try:
        cls(object()).feed_data(_raw(vector))
        note = "accepts"
    except httptools.HttpParserUpgrade:
        note = "accepts"
    except httptools.HttpParserError as exc:
        note = f"rejects: {exc}"
    assert note == vector["llhttp"]


# --- RequestParser ---------------------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
WS = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class CountingParser:
    """Wraps the llhttp parser to record how many bytes it was given."""

    def __init__(self, inner):
        self.inner, self.fed = inner, 0

    def feed_data(self, data):
        self.fed += len(data)
        return self.inner.feed_data(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_upgrade_events_are_head_end_upgrade_in_that_order():
    events = RequestParser().feed(WS + b"\x81\x80abcd")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage, Upgrade]
    assert events[0].is_upgrade and events[1].trailers == []
    assert events[2].leftover == b"\x81\x80abcd"


def test_upgrade_after_pipelined_request_in_the_same_feed():
    events = RequestParser().feed(GET + WS + b"tail")
    assert [type(e) for e in events] == [RequestHead, EndOfMessage, RequestHead, EndOfMessage, Upgrade]
    assert events[-1].leftover == b"tail"


def test_feed_after_upgrade_is_a_bug():
    parser = RequestParser()
    parser.feed(WS)
    with pytest.raises(RuntimeError):
        parser.feed(b"more")
    assert not parser.in_head and not parser.idle


def test_in_head_and_idle_follow_the_head():
    parser = RequestParser()
    assert parser.idle and not parser.in_head
    assert parser.feed(b"GET / HT") == []
    assert parser.in_head and not parser.idle
    assert [type(e) for e in parser.feed(b"TP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab")] == [RequestHead, Body]
    assert not parser.in_head and not parser.idle  # in the body: not the head timer's business
    parser.feed(b"c")
    assert parser.idle
    parser.feed(b"\r\n")  # an empty line before the next request still counts as started
    assert parser.in_head


def test_head_split_over_many_feeds_hits_431_without_feeding_llhttp_past_the_limit():
    parser = RequestParser(max_head_bytes=100)
    parser._parser = counting = CountingParser(parser._parser)
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 200
    fed = 0
    with pytest.raises(HttpError) as info:
        for i in range(0, len(data), 7):
            parser.feed(data[i : i + 7])
            fed = i + 7
    assert info.value.status == 431
    assert fed <= 100 < fed + 7  # it failed on the feed that crossed the limit
    assert counting.fed <= 100


def test_huge_single_feed_is_not_handed_to_llhttp():
    parser = RequestParser(max_head_bytes=1000)
    parser._parser = counting = CountingParser(parser._parser)
    with pytest.raises(HttpError) as info:
        parser.feed(b"GET / HTTP/1.1\r\nX: " + b"y" * 1_000_000 + b"\r\n\r\n")
    assert info.value.status == 431 and counting.fed == 1000


def test_head_limit_counts_each_pipelined_head_separately():
    parser = RequestParser(max_head_bytes=len(GET))
    events = parser.feed(GET * 5)
    assert len(events) == 10


def test_head_after_chunked_body_in_the_same_feed_is_counted_exactly():
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    partial = b"GET /next HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 60  # 92 bytes, no end yet
    ok = RequestParser(max_head_bytes=100)
    assert len(ok.feed(chunked + partial)) == 3 and ok.in_head
    assert [type(e) for e in ok.feed(b"\r\n\r\n")] == [RequestHead, EndOfMessage]  # 96 bytes
    over = RequestParser(max_head_bytes=100)
    over.feed(chunked + partial)
    with pytest.raises(HttpError) as info:
        over.feed(b"ppppp\r\n\r\n")  # 101 bytes
    assert info.value.status == 431


def test_error_is_sticky():
    parser = RequestParser()
    with pytest.raises(HttpError) as first:
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    with pytest.raises(HttpError) as again:
        parser.feed(GET)
    assert again.value is first.value


def test_llhttp_message_is_in_the_reason():
    with pytest.raises(HttpError) as info:
        RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
    assert info.value.status == 400
    assert "Unexpected whitespace after header value" in info.value.reason


def test_accepts_bytearray_and_memoryview():
    assert len(RequestParser().feed(bytearray(GET))) == 2
    assert len(RequestParser().feed(memoryview(GET))) == 2


def test_callback_bugs_are_not_turned_into_400(monkeypatch):
    def broken(self, body):
        raise ZeroDivisionError

    monkeypatch.setattr(RequestParser, "on_body", broken)
    with pytest.raises(ZeroDivisionError):
        RequestParser().feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")


def test_large_body_in_one_feed_is_not_a_head():
    body = b"z" * 300_000
    events = RequestParser(max_head_bytes=1024).feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body) + GET
    )
    assert b"".join(e.data for e in events if isinstance(e, Body)) == body
    assert [type(e) for e in events][-2:] == [RequestHead, EndOfMessage]


def test_request_head_helpers():
    head = RequestHead("GET", "/a/b?x=1?y", "1.1", [("Host", "h"), ("X-A", "1"), ("x-a", "2")])
    assert head.path == "/a/b" and head.query == "x=1?y"
    assert head.get("HOST") == "h" and head.get("x-A") == "1" and head.get("missing") is None
    assert head.get_all("X-A") == ["1", "2"]


# --- ResponseParser --------------------------------------------------------------------------------


def test_head_expectation_applies_to_one_final_response():
    parser = ResponseParser()
    parser.expect_head_response()
    first = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    assert [type(e) for e in first] == [ResponseHead, EndOfMessage]
    second = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert [type(e) for e in second] == [ResponseHead, Body, EndOfMessage]


def test_head_response_leftover_is_parsed_as_next_response_in_any_chunking():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    parser = ResponseParser()
    parser.expect_head_response()
    events = [e for i in range(len(data)) for e in parser.feed(data[i : i + 1])]
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage, ResponseHead, Body, EndOfMessage]


def test_response_bytes_before_the_head_request_are_refused():
    # In one read with the end of the previous response: sent before the HEAD request was.
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    parser.expect_head_response()
    with pytest.raises(HttpError) as info:
        parser.feed(b"0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert info.value.status == 502


def test_101_upgrade_order_and_leftover():
    events = ResponseParser().feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00"
    )
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage, Upgrade]
    assert events[-1].leftover == b"\x81\x00"


def test_feed_eof_between_responses_is_clean():
    parser = ResponseParser()
    assert parser.feed_eof() == []
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parser.feed_eof() == []


def test_close_delimited_body_flags_and_eof():
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart one ")
    events += parser.feed(b"part two")
    head = events[0]
    assert head.body_until_close and not head.keep_alive
    assert parser.feed_eof() == [EndOfMessage([])]


# --- serializers -----------------------------------------------------------------------------------


def test_serialize_request_head_round_trips():
    headers = [("Host", "example.com"), ("X-Case", "Kept"), ("x-case", "again")]
    raw = serialize_request_head("GET", "/p?q=1", headers)
    assert raw == b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Case: Kept\r\nx-case: again\r\n\r\n"
    head = RequestParser().feed(raw)[0]
    assert (head.method, head.target, head.headers) == ("GET", "/p?q=1", headers)


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "/", [("X", "a\r\nInjected: 1")]),
        ("GET", "/", [("X", "a\nb")]),
        ("GET", "/", [("X", "a\x00b")]),
        ("GET", "/", [("Bad Name", "a")]),
        ("GET", "/", [("X:Y", "a")]),
        ("GET", "/a b", []),
        ("GET", "/a\r\n", []),
        ("GET", "", []),
        ("G ET", "/", []),
    ],
)
def test_serialize_request_head_rejects_splitting(args):
    with pytest.raises(ValueError):
        serialize_request_head(*args)


def test_serialize_response_head():
    assert serialize_response_head(101, "Switching Protocols", [("Upgrade", "websocket")]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    )
    assert serialize_response_head(200, "OK", [], version="1.0") == b"HTTP/1.0 200 OK\r\n\r\n"
    for bad in [(200, "OK\r\nX: y", []), (200, "OK", [("X", "1\r\n")]), (20, "OK", [])]:
        with pytest.raises(ValueError):
            serialize_response_head(*bad)


def test_chunks():
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"hello world!") == b"c\r\nhello world!\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    parser = RequestParser()
    events = parser.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + encode_chunk(b"x" * 300) + encode_chunk(b"") + LAST_CHUNK
    )
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"x" * 300


def test_simple_response():
    raw = simple_response(404, "no route for example.com\n", extra_headers=[("X-Why", "route")], close=True)
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    events = ResponseParser().feed(raw)
    head = events[0]
    assert head.get("Content-Type") == "text/plain; charset=utf-8"
    assert head.get("X-Why") == "route" and head.get("Connection") == "close"
    assert head.content_length == len(b"no route for example.com\n") and not head.keep_alive
    assert events[1] == Body(b"no route for example.com\n")


def test_simple_response_utf8_and_unknown_status():
    raw = simple_response(599, "é")
    assert raw.startswith(b"HTTP/1.1 599 Unknown\r\n")
    assert b"Content-Length: 2\r\n" in raw and raw.endswith("é".encode())
    assert b"Connection" not in raw


# --- properties ------------------------------------------------------------------------------------

MESSAGES = [
    GET,
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n\r\n\r\nabc",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\r\n\r\n\r\n0\r\nT: 1\r\n\r\n",
    b"\r\nGET /lead HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 90 + b"\r\n\r\n",
]


def _feed_all(parser, pieces):
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return normalize(events)


@settings(max_examples=300, deadline=None)
@given(order=st.lists(st.integers(0, len(MESSAGES) - 1), min_size=1, max_size=6), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_any_chunking_gives_the_same_events(order, cuts):
    stream = b"".join(MESSAGES[i] for i in order)
    whole = _feed_all(RequestParser(max_head_bytes=160), [stream])
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    assert _feed_all(RequestParser(max_head_bytes=160), pieces) == whole
    assert [e[0] for e in whole].count("head") == len(order)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), response=st.booleans())
def test_garbage_raises_only_http_error(data, response):
    parser = ResponseParser() if response else RequestParser()
    try:
        parser.feed(b"GET / HTTP/1.1\r\n" + data if not response else b"HTTP/1.1 200 OK\r\n" + data)
        if response:
            parser.feed_eof()
    except HttpError:
        pass
