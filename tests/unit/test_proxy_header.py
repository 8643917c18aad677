"""wsproxy.protocol.proxy_header: the PROXY protocol v1/v2 (HAProxy's proxy-protocol.txt).

The vectors are written out byte by byte from the spec, not produced by ``build``, so the
reader and the builder are each checked against the spec rather than against each other.
Every valid vector is fed whole, one byte at a time, and split at every position.
"""

from __future__ import annotations

import pytest

from wsproxy.errors import ProtocolError
from wsproxy.protocol.proxy_header import (MAX_V2_PAYLOAD, V1_MAX_LENGTH, V2_SIGNATURE, ProxyHeaderError,
                                           ProxyHeaderReader, ProxyInfo, build, build_v2,
                                           looks_like_proxy_header, parse)

SIG = bytes.fromhex("0D0A0D0A000D0A515549540A")
FFFF6 = ":".join(["ffff"] * 8)


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + n.to_bytes(2, "big") + body


IPV4_BODY = bytes([192, 168, 0, 1]) + bytes([192, 168, 0, 11]) + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big")
IPV6_BODY = (bytes.fromhex("20010db8000000000000000000000001") + bytes.fromhex("20010db8000000000000000000000002")
             + (40000).to_bytes(2, "big") + (8443).to_bytes(2, "big"))
TLVS = (bytes([0x01, 0x00, 0x02]) + b"h2"  # PP2_TYPE_ALPN
        + bytes([0x04, 0x00, 0x03]) + b"\x00\x00\x00"  # PP2_TYPE_NOOP (padding)
        + bytes([0x20, 0x00, 0x00]))  # PP2_TYPE_SSL with an empty value

# (name, wire bytes, expected fields: version, command, family, source, dest)
VALID = [
    ("v1-tcp4-spec-example", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     (1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    ("v1-tcp4-longest", b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     (1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("255.255.255.255", 65535))),
    ("v1-tcp4-port-zero", b"PROXY TCP4 10.0.0.1 10.0.0.2 0 0\r\n",
     (1, "PROXY", "TCP4", ("10.0.0.1", 0), ("10.0.0.2", 0))),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n",
     (1, "PROXY", "TCP6", ("2001:db8::1", 40000), ("2001:db8::2", 8443))),
    ("v1-tcp6-longest", ("PROXY TCP6 %s %s 65535 65535\r\n" % (FFFF6, FFFF6)).encode(),
     (1, "PROXY", "TCP6", (FFFF6, 65535), (FFFF6, 65535))),
    ("v1-tcp6-canonical", b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
     (1, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 2))),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", (1, "PROXY", "UNKNOWN", None, None)),
    ("v1-unknown-107-bytes", ("PROXY UNKNOWN %s %s 65535 65535\r\n" % (FFFF6, FFFF6)).encode(),
     (1, "PROXY", "UNKNOWN", None, None)),
    ("v1-unknown-anything-after", b"PROXY UNKNOWN whatever the sender puts here\r\n",
     (1, "PROXY", "UNKNOWN", None, None)),
    ("v2-proxy-tcp4", v2(0x21, 0x11, IPV4_BODY),
     (2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    ("v2-proxy-tcp4-tlvs", v2(0x21, 0x11, IPV4_BODY + TLVS),
     (2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    ("v2-proxy-udp4", v2(0x21, 0x12, IPV4_BODY),
     (2, "PROXY", "UDP4", ("192.168.0.1", 56324), ("192.168.0.11", 443))),
    ("v2-proxy-tcp6", v2(0x21, 0x21, IPV6_BODY),
     (2, "PROXY", "TCP6", ("2001:db8::1", 40000), ("2001:db8::2", 8443))),
    ("v2-proxy-tcp6-tlvs", v2(0x21, 0x21, IPV6_BODY + TLVS),
     (2, "PROXY", "TCP6", ("2001:db8::1", 40000), ("2001:db8::2", 8443))),
    ("v2-local-empty", v2(0x20, 0x00, b""), (2, "LOCAL", "UNSPEC", None, None)),
    ("v2-local-with-addresses", v2(0x20, 0x11, IPV4_BODY), (2, "LOCAL", "TCP4", None, None)),
    ("v2-local-garbage-skipped", v2(0x20, 0x00, b"\x99" * 7), (2, "LOCAL", "UNSPEC", None, None)),
    ("v2-proxy-unspec", v2(0x21, 0x00, b""), (2, "PROXY", "UNSPEC", None, None)),
    ("v2-proxy-unix", v2(0x21, 0x31, b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")),
     (2, "PROXY", "UNIX_STREAM", None, None)),
]


def feed_chunks(chunks) -> tuple[ProxyInfo | None, ProxyHeaderReader]:
    reader = ProxyHeaderReader()
    info = None
    for chunk in chunks:
        assert info is None, "the reader completed before the last chunk"
        info = reader.feed(chunk)
    return info, reader


def check(info: ProxyInfo, wire: bytes, expected) -> None:
    version, command, family, source, dest = expected
    assert (info.version, info.command, info.family, info.source, info.dest) == expected
    assert info.length == len(wire)


@pytest.mark.parametrize("name, wire, expected", VALID, ids=[v[0] for v in VALID])
def test_valid_whole(name, wire, expected):
    info, reader = feed_chunks([wire])
    check(info, wire, expected)
    assert reader.leftover == b""


@pytest.mark.parametrize("name, wire, expected", VALID, ids=[v[0] for v in VALID])
def test_valid_byte_by_byte_with_leftover(name, wire, expected):
    data = wire + b"GET / HTTP/1.1\r\n"
    reader = ProxyHeaderReader()
    for i in range(len(wire)):
        info = reader.feed(data[i:i + 1])
        assert (info is None) == (i < len(wire) - 1)
    check(info, wire, expected)
    assert reader.leftover == b""  # the header ended exactly at the last byte fed


@pytest.mark.parametrize("name, wire, expected", VALID, ids=[v[0] for v in VALID])
def test_valid_split_everywhere(name, wire, expected):
    tail = b"\r\nPROXY and more client bytes"
    data = wire + tail
    for cut in range(1, len(data)):
        reader = ProxyHeaderReader()
        first = reader.feed(data[:cut])
        if cut < len(wire):
            assert first is None
            info = reader.feed(data[cut:])
            rest = b""
        else:
            info = first
            rest = data[cut:]  # the caller's own bytes: never fed to the reader
        check(info, wire, expected)
        assert reader.leftover + rest == tail


@pytest.mark.parametrize("name, wire, expected", VALID, ids=[v[0] for v in VALID])
def test_every_proper_prefix_is_incomplete_not_an_error(name, wire, expected):
    for n in range(len(wire)):
        assert parse(wire[:n]) == (None, b"")


def test_v1_exact_lengths_from_the_spec():
    assert len(("PROXY TCP6 %s %s 65535 65535\r\n" % (FFFF6, FFFF6)).encode()) == 104
    assert len(("PROXY UNKNOWN %s %s 65535 65535\r\n" % (FFFF6, FFFF6)).encode()) == V1_MAX_LENGTH == 107


def test_v2_tlvs_are_split_not_interpreted():
    info, _ = parse(v2(0x21, 0x11, IPV4_BODY + TLVS))
    assert info.tlvs == ((0x01, b"h2"), (0x04, b"\0\0\0"), (0x20, b""))
    assert info.length == 16 + 12 + len(TLVS)


def test_leftover_after_a_header_and_data_in_one_chunk():
    info, leftover = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nSSH-2.0-x\r\n")
    assert info.source == ("1.2.3.4", 1)
    assert leftover == b"SSH-2.0-x\r\n"
    info, leftover = parse(v2(0x21, 0x11, IPV4_BODY) + b"\x16\x03\x01")
    assert info.dest == ("192.168.0.11", 443)
    assert leftover == b"\x16\x03\x01"


# --------------------------------------------------------------------------- malformed

MALFORMED = [
    ("http-request", b"GET / HTTP/1.1\r\n\r\n", "not a PROXY header"),
    ("empty-line", b"\r\n\r\nGET", "not a PROXY header"),
    ("lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY header"),
    ("proxy-no-space", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY header"),
    ("v1-bare-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
    ("v1-unknown-proto", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    ("v1-udp4", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    ("v1-empty", b"PROXY \r\n", "6 fields"),
    ("v1-missing-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "6 fields"),
    ("v1-extra-field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "6 fields"),
    ("v1-double-space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "6 fields"),
    ("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "6 fields"),
    ("v1-tab", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", "6 fields"),
    ("v1-ipv6-in-tcp4", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-ipv4-in-tcp6", b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "not an IPv6 address"),
    ("v1-bad-octet", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-leading-zero-octet", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-hostname", b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    ("v1-port-too-big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port"),
    ("v1-port-negative", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "destination port"),
    ("v1-port-not-digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n", "source port"),
    ("v1-port-too-long", b"PROXY TCP4 1.2.3.4 5.6.7.8 000001 2\r\n", "source port"),
    ("v1-port-unicode-digit", "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(), "not ASCII"),
    ("v1-not-ascii", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "not ASCII"),
    ("v1-108-bytes", ("PROXY UNKNOWN %s %s 65535 655355\r\n" % (FFFF6, FFFF6)).encode(), "longer than 107"),
    ("v1-no-crlf-in-107", b"PROXY " + b"x" * 200, "longer than 107"),
    ("v2-version-1", v2(0x11, 0x11, IPV4_BODY), "version nibble must be 2"),
    ("v2-version-3", v2(0x31, 0x11, IPV4_BODY), "version nibble must be 2"),
    ("v2-command-2", v2(0x22, 0x11, IPV4_BODY), "command must be LOCAL"),
    ("v2-family-4", v2(0x21, 0x41, IPV4_BODY), "not defined"),
    ("v2-proto-3", v2(0x21, 0x13, IPV4_BODY), "not defined"),
    ("v2-unspec-proto", v2(0x21, 0x01, IPV4_BODY), "not defined"),
    ("v2-inet-too-short", v2(0x21, 0x11, IPV4_BODY[:8]), "need 12 bytes"),
    ("v2-inet6-too-short", v2(0x21, 0x21, IPV4_BODY), "need 36 bytes"),
    ("v2-unix-too-short", v2(0x21, 0x31, b"\0" * 100), "need 216 bytes"),
    ("v2-tlv-truncated-head", v2(0x21, 0x11, IPV4_BODY + b"\x01\x00"), "TLV truncated"),
    ("v2-tlv-overruns", v2(0x21, 0x11, IPV4_BODY + b"\x01\x00\x05ab"), "overruns"),
    ("v2-oversized", v2(0x21, 0x11, b"", length=MAX_V2_PAYLOAD + 1), "limit"),
    ("v2-max-length", v2(0x21, 0x11, b"", length=0xFFFF), "limit"),
]


@pytest.mark.parametrize("name, wire, why", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_whole(name, wire, why):
    with pytest.raises(ProxyHeaderError) as info:
        ProxyHeaderReader().feed(wire)
    assert why in info.value.reason
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("name, wire, why", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_byte_by_byte(name, wire, why):
    """Fed one byte at a time, the error comes, and no later than the whole-input error."""
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError) as info:
        for i in range(len(wire)):
            assert reader.feed(wire[i:i + 1]) is None
    assert why in info.value.reason


@pytest.mark.parametrize("wire, at", [
    (b"G", 1), (b"PROXX", 5), (b"\r\n\r\n\x00\r\nQUX", 10), (b"\r\nGET", 3),
    (SIG + b"\x11", 13), (SIG + b"\x21\x99", 14), (SIG + b"\x21\x11\xff\xff", 16),
    (b"PROXY " + b"1" * 101, 107), (b"PROXY TCP4 1.2.3.4\n", 19),
])
def test_errors_come_as_soon_as_the_bytes_prove_them(wire, at):
    reader = ProxyHeaderReader()
    for i in range(at - 1):
        assert reader.feed(wire[i:i + 1]) is None
    with pytest.raises(ProxyHeaderError):
        reader.feed(wire[at - 1:at])


def test_errors_are_sticky_and_complete_headers_take_no_more():
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError) as first:
        reader.feed(b"NOPE")
    with pytest.raises(ProxyHeaderError) as second:
        reader.feed(b"PROXY UNKNOWN\r\n")
    assert second.value is first.value
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN\r\nrest") is not None
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_the_oversize_check_does_not_wait_for_the_payload():
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError):
        reader.feed(v2(0x21, 0x11, b"", length=60000))  # only the 16-byte head was sent
    reader = ProxyHeaderReader(max_v2_payload=12)
    assert reader.feed(v2(0x21, 0x11, IPV4_BODY)).source == ("192.168.0.1", 56324)
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderReader(max_v2_payload=12).feed(v2(0x21, 0x11, IPV4_BODY + TLVS))


# --------------------------------------------------------------------------- detection

@pytest.mark.parametrize("prefix, expected", [
    (b"", None), (b"P", None), (b"PROX", None), (b"PROXY", None), (b"PROXY ", True),
    (b"PROXY TCP4 ", True), (b"\r", None), (b"\r\n\r\n", None), (SIG[:11], None), (SIG, True),
    (SIG + b"\x21", True), (b"POST / HTTP/1.1", False), (b"PUT", False), (b"PROXYX", False),
    (b"\r\n\r\n\x01", False), (b"GET", False), (b"\x16\x03\x01", False), (b"SSH-2.0", False),
    (bytearray(b"PROXY "), True), (memoryview(SIG), True),
])
def test_looks_like_proxy_header(prefix, expected):
    assert looks_like_proxy_header(prefix) is expected


def test_signature_constant_is_the_spec_one():
    assert V2_SIGNATURE == SIG and len(SIG) == 12


# --------------------------------------------------------------------------- building

@pytest.mark.parametrize("src, dst, wire", [
    (("192.168.0.1", 56324), ("192.168.0.11", 443), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
    (("2001:db8::1", 40000), ("2001:db8::2", 8443), b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n"),
    (("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6), b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"),  # dual-stack view
    (None, None, b"PROXY UNKNOWN\r\n"),
    (("-", 0), ("127.0.0.1", 80), b"PROXY UNKNOWN\r\n"),  # not an IP (a unix socket peer)
    (("fe80::1%eth0", 1), ("fe80::2", 2), b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"),  # zone id dropped
])
def test_build_v1(src, dst, wire):
    assert build("v1", src, dst) == wire


def test_build_v1_mixed_families_map_ipv4_into_ipv6():
    wire = build("v1", ("10.0.0.1", 5), ("2001:db8::2", 6))
    info, _ = parse(wire)
    assert info.family == "TCP6"
    assert info.dest == ("2001:db8::2", 6)
    assert info.source[1] == 5 and info.source[0].startswith("::ffff:")


@pytest.mark.parametrize("src, dst, wire", [
    (("192.168.0.1", 56324), ("192.168.0.11", 443), v2(0x21, 0x11, IPV4_BODY)),
    (("2001:db8::1", 40000), ("2001:db8::2", 8443), v2(0x21, 0x21, IPV6_BODY)),
    (None, None, v2(0x21, 0x00, b"")),
])
def test_build_v2(src, dst, wire):
    assert build("v2", src, dst) == wire


def test_build_v2_local_and_tlvs():
    assert build_v2(None, None, local=True) == v2(0x20, 0x00, b"")
    assert build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443), tlvs=((0x01, b"h2"),)) == \
        v2(0x21, 0x11, IPV4_BODY + b"\x01\x00\x02h2")


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("src, dst", [
    (("127.0.0.1", 50000), ("127.0.0.1", 8080)),
    (("203.0.113.7", 0), ("198.51.100.1", 65535)),
    (("::1", 1), ("::1", 2)),
    (("2001:db8:1:2:3:4:5:6", 443), ("2001:db8::", 1)),
])
def test_build_then_read_round_trips(version, src, dst):
    wire = build(version, src, dst)
    info, leftover = parse(wire + b"x")
    assert (info.source, info.dest, leftover) == (src, dst, b"x")
    assert info.version == int(version[1])
    assert info.length == len(wire)


@pytest.mark.parametrize("version", ["v3", "1", "", None, "V1"])
def test_build_refuses_unknown_versions(version):
    with pytest.raises(ValueError):
        build(version, ("127.0.0.1", 1), ("127.0.0.1", 2))
