"""wsproxy.protocol.forwarding: hop-by-hop stripping, trusted proxies, X-Forwarded-* and Forwarded."""

from __future__ import annotations

import pytest

from wsproxy.protocol.forwarding import HOP_BY_HOP, TrustedProxies, forwarded_headers, strip_hop_by_hop


def names(headers):
    return [n for n, _ in headers]


def test_hop_by_hop_set():
    assert HOP_BY_HOP == {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    }


def test_strip_hop_by_hop_keeps_order_and_case_of_the_rest():
    headers = [
        ("Host", "a"), ("Connection", "keep-alive, Upgrade, X-Secret"), ("Keep-Alive", "timeout=5"),
        ("Upgrade", "websocket"), ("x-secret", "1"), ("TE", "trailers"), ("Trailer", "X-Sum"),
        ("Transfer-Encoding", "chunked"), ("Proxy-Connection", "keep-alive"), ("X-Kept", "y"),
        ("Sec-WebSocket-Key", "k"),
    ]
    assert strip_hop_by_hop(headers) == [("Host", "a"), ("X-Kept", "y"), ("Sec-WebSocket-Key", "k")]
    assert len(headers) == 11  # the input is not modified


def test_strip_hop_by_hop_reads_every_connection_header():
    headers = [("Connection", "close"), ("connection", " X-A ,,x-b"), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")]
    assert strip_hop_by_hop(headers) == [("X-C", "3")]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.2.7", False),
        ("::ffff:10.1.2.3", True),  # dual-stack sockets report IPv4 peers like this
        ("::ffff:11.0.0.1", False),
        ("2001:db8::42", True),
        ("[2001:db8::42]", True),
        ("2001:db9::1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("not an ip", False),
        ("", False),
    ],
)
def test_trusted_proxies(ip, expected):
    trusted = TrustedProxies(["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"])
    assert trusted.contains(ip) is expected


def test_trusted_proxies_edge_forms():
    assert TrustedProxies(["127.0.0.1"]).contains("127.0.0.1")  # a bare address is a /32
    assert TrustedProxies(["10.0.0.1/8"]).contains("10.9.9.9")  # host bits are tolerated
    assert TrustedProxies(["::ffff:10.0.0.0/104"]).contains("10.2.3.4")
    assert not TrustedProxies([]).contains("127.0.0.1") and not TrustedProxies([])
    with pytest.raises(ValueError):
        TrustedProxies(["10.0.0.0/33"])


SPOOFED = [
    ("Host", "example.com"),
    ("X-Forwarded-For", "1.1.1.1"),
    ("x-forwarded-for", "2.2.2.2"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "bank.example"),
    ("Forwarded", "for=1.1.1.1;proto=https"),
    ("X-Real-IP", "1.1.1.1"),
    ("Accept", "*/*"),
]


def test_untrusted_peer_claims_are_replaced():
    out = forwarded_headers(SPOOFED, client_ip="203.0.113.9", proto="http", host="example.com", trusted=False)
    assert out == [
        ("Host", "example.com"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "example.com"),
        ("Forwarded", "for=203.0.113.9;proto=http;host=example.com"),
    ]


def test_trusted_peer_chain_is_extended():
    out = forwarded_headers(SPOOFED, client_ip="10.0.0.5", proto="http", host="example.com", trusted=True)
    assert out == [
        ("Host", "example.com"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "bank.example"),
        ("X-Real-IP", "1.1.1.1"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 10.0.0.5"),
        ("Forwarded", "for=1.1.1.1;proto=https, for=10.0.0.5;proto=http;host=example.com"),
    ]


def test_trusted_peer_without_incoming_headers():
    out = forwarded_headers([("Host", "h")], client_ip="10.0.0.5", proto="https", host="h", trusted=True)
    assert out == [
        ("Host", "h"),
        ("X-Forwarded-For", "10.0.0.5"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "h"),
        ("Forwarded", "for=10.0.0.5;proto=https;host=h"),
    ]


def test_ipv6_client_and_host_with_port():
    out = dict(forwarded_headers([], client_ip="2001:db8::1", proto="https", host="example.com:8443", trusted=False))
    assert out["X-Forwarded-For"] == "2001:db8::1"
    assert out["Forwarded"] == 'for="[2001:db8::1]";proto=https;host="example.com:8443"'


def test_ipv4_mapped_client_is_written_as_ipv4():
    out = dict(forwarded_headers([], client_ip="::ffff:192.0.2.1", proto="http", host="a", trusted=False))
    assert out["X-Forwarded-For"] == "192.0.2.1"
    assert out["Forwarded"] == "for=192.0.2.1;proto=http;host=a"


def test_no_host_and_unknown_client():
    out = forwarded_headers([], client_ip="unix-socket", proto="http", host=None, trusted=False)
    assert names(out) == ["X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"]
    assert dict(out)["Forwarded"] == "for=unknown;proto=http"


def test_forwarded_host_needing_escapes_is_quoted():
    out = dict(forwarded_headers([], client_ip="192.0.2.1", proto="http", host='a"b\\c', trusted=False))
    assert out["Forwarded"] == 'for=192.0.2.1;proto=http;host="a\\"b\\\\c"'
