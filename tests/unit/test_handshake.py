"""wsproxy.protocol.handshake against tests/vectors/handshake.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsproxy.errors import HandshakeError, HttpError
from wsproxy.protocol.handshake import (
    accept_key,
    check_server_accept,
    is_websocket_request,
    negotiated_rsv,
    origin_allowed,
    validate_client_handshake,
)
from wsproxy.protocol.http1 import RequestHead, RequestParser, ResponseHead

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "handshake.json").read_text())


def _headers(rows: list[list[str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in rows]


@pytest.mark.parametrize("vector", VECTORS["accept_key"], ids=lambda v: v["key"])
def test_accept_key(vector):
    assert accept_key(vector["key"]) == vector["accept"]


@pytest.mark.parametrize("vector", VECTORS["client"], ids=lambda v: v["name"])
def test_client_handshake(vector):
    head = RequestHead(vector["method"], "/chat", vector["version"], _headers(vector["headers"]))
    expect = vector["expect"]
    if expect == "ok":
        validate_client_handshake(head)
        return
    with pytest.raises(HandshakeError) as info:
        validate_client_handshake(head)
    assert info.value.status == expect["status"]
    assert expect["reason"] in info.value.reason
    assert info.value.headers == tuple(tuple(h) for h in expect.get("headers", []))


@pytest.mark.parametrize("vector", VECTORS["server"], ids=lambda v: v["name"])
def test_server_accept(vector):
    head = ResponseHead("1.1", vector["status"], "Switching Protocols", _headers(vector["headers"]))
    expect = vector["expect"]
    if expect == "ok":
        check_server_accept(vector["key"], head)
        return
    with pytest.raises(HandshakeError) as info:
        check_server_accept(vector["key"], head)
    assert info.value.status == 502 and expect["reason"] in info.value.reason


@pytest.mark.parametrize("vector", VECTORS["negotiated_rsv"], ids=lambda v: v["name"])
def test_negotiated_rsv(vector):
    assert negotiated_rsv(ResponseHead("1.1", 101, "", _headers(vector["headers"]))) == vector["rsv"]


@pytest.mark.parametrize("vector", VECTORS["origin"], ids=lambda v: f"{v['origin']!r} in {v['allowed']}")
def test_origin_allowed(vector):
    assert origin_allowed(vector["origin"], tuple(vector["allowed"])) is vector["expect"]


@pytest.mark.parametrize("vector", VECTORS["is_websocket"], ids=lambda v: repr(v["upgrade"]))
def test_is_websocket_request(vector):
    head = RequestHead("GET", "/", "1.1", [("Upgrade", value) for value in vector["upgrade"]])
    assert is_websocket_request(head) is vector["expect"]


def test_handshake_error_is_an_http_error():
    # The I/O shell answers every HttpError in one place; a HandshakeError adds headers.
    with pytest.raises(HttpError):
        validate_client_handshake(RequestHead("GET", "/", "1.1", []))


def test_parsed_request_passes():
    raw = (
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = RequestParser().feed(raw)[0]
    assert is_websocket_request(head) and head.is_upgrade
    validate_client_handshake(head)
