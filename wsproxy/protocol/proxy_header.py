"""The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 (text) and 2 (binary). Sans-I/O.

A proxy that relays a TCP connection writes one PROXY header before the client's first
byte, telling the next hop who the client really is. wsproxy writes one to members
(``proxy_protocol = "v1" | "v2"``) and reads one from a front balancer (``accept_proxy``).

Writing::

    build("v2", src=("203.0.113.7", 51234), dst=("192.0.2.1", 443)) -> bytes

Reading, from any chunking (one byte at a time works)::

    reader = ProxyHeaderReader()
    info = reader.feed(data)        # None: need more bytes; raises ProxyHeaderError if malformed
    info.source                     # ("203.0.113.7", 51234), or None: use the real peer
    reader.leftover                 # the bytes after the header (the client's own data)

``looks_like_proxy_header(prefix)`` tells from the first bytes whether a peer is starting
a PROXY header (True), is not (False), or sent too little to tell yet (None).

Limits, from the spec: a v1 line is at most 107 bytes including its CRLF; a v2 header is 16
bytes plus the length it announces, capped here at ``MAX_V2_PAYLOAD`` (the spec allows up to
65535, but addresses take at most 216 bytes and real TLV sets are small). v2 TLVs are split
and kept in ``ProxyInfo.tlvs`` but not interpreted.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from wsproxy.errors import ProtocolError

__all__ = [
    "V1_PREFIX", "V2_SIGNATURE", "V1_MAX_LENGTH", "MAX_V2_PAYLOAD",
    "ProxyHeaderError", "ProxyInfo", "ProxyHeaderReader",
    "build", "build_v1", "build_v2", "looks_like_proxy_header", "parse",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # 12 bytes: \x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN" + two full IPv6 addresses + two ports + CRLF
MAX_V2_PAYLOAD = 4096  # bytes after the 16-byte v2 header: addresses + TLVs
_V2_HEAD = 16

# v2 byte 13: version (high nibble, always 2) and command (low nibble)
_CMD_LOCAL = 0x0
_CMD_PROXY = 0x1
# v2 byte 14: address family (high nibble) and transport protocol (low nibble); only these
# seven values are defined, every other one must be rejected.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_FAMILY_NAMES = {0x00: "UNSPEC", 0x11: "TCP4", 0x12: "UDP4", 0x21: "TCP6", 0x22: "UDP6",
                 0x31: "UNIX_STREAM", 0x32: "UNIX_DGRAM"}
_ADDRESS_SIZES = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyHeaderError(ProtocolError):
    """A malformed, truncated or oversized PROXY header. ``reason`` says what was wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header said.

    ``source``/``dest`` are ``(ip, port)`` with the IP in its canonical text form, or None
    when the header carries no usable address (v1 ``UNKNOWN``, v2 ``LOCAL``, ``UNSPEC`` or a
    unix socket): the receiver then uses the connection's real addresses.
    """

    version: int  # 1 | 2
    command: str  # "PROXY" | "LOCAL" (v1 is always "PROXY")
    family: str  # "TCP4" | "TCP6" | "UNKNOWN" (v1); "TCP4" | "UDP4" | "TCP6" | "UDP6" | "UNIX_STREAM" | "UNIX_DGRAM" | "UNSPEC" (v2)
    source: tuple[str, int] | None
    dest: tuple[str, int] | None
    length: int  # bytes the header took on the wire
    tlvs: tuple[tuple[int, bytes], ...] = ()  # v2 only: (type, value), in order


# --------------------------------------------------------------------------- detection

def looks_like_proxy_header(prefix) -> bool | None:
    """Does a connection that starts with ``prefix`` start with a PROXY header?

    True: it starts with the v1 ``"PROXY "`` or the 12-byte v2 signature. False: it cannot
    be one. None: ``prefix`` is too short to tell (it is a proper prefix of one of them).
    """
    prefix = bytes(prefix[:len(V2_SIGNATURE)])
    if prefix.startswith(V1_PREFIX) or prefix.startswith(V2_SIGNATURE):
        return True
    if V1_PREFIX.startswith(prefix) or V2_SIGNATURE.startswith(prefix):
        return None
    return False


# --------------------------------------------------------------------------- building

def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except (ValueError, AttributeError):
        return None


def _pair(src, dst):
    """Both addresses as ipaddress objects of one family, or None when that is impossible.

    Mixed families are mapped to IPv6 (``::ffff:a.b.c.d``); two IPv4-mapped IPv6 addresses
    (a dual-stack socket's view of IPv4 peers) are sent as IPv4.
    """
    if src is None or dst is None:
        return None
    a, b = _ip(src[0]), _ip(dst[0])
    if a is None or b is None:
        return None
    if not (0 <= int(src[1]) <= 65535 and 0 <= int(dst[1]) <= 65535):
        return None
    a4 = a if a.version == 4 else a.ipv4_mapped
    b4 = b if b.version == 4 else b.ipv4_mapped
    if a4 is not None and b4 is not None:
        return a4, b4
    if a.version == 4:
        a = ipaddress.IPv6Address("::ffff:" + str(a))
    if b.version == 4:
        b = ipaddress.IPv6Address("::ffff:" + str(b))
    return a, b


def build_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """``PROXY TCP4|TCP6 src dst sport dport\\r\\n``, or ``PROXY UNKNOWN\\r\\n`` when the
    addresses are missing or not IP addresses."""
    pair = _pair(src, dst)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    a, b = pair
    proto = "TCP4" if a.version == 4 else "TCP6"
    return ("PROXY %s %s %s %d %d\r\n" % (proto, a, b, int(src[1]), int(dst[1]))).encode("ascii")


def build_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False,
             tlvs: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """The binary header: command PROXY over TCP4/TCP6 (AF_UNSPEC when the addresses are
    missing or not IP addresses), or command LOCAL when ``local`` (health checks)."""
    tail = b"".join(struct.pack("!BH", t, len(v)) + bytes(v) for t, v in tlvs)
    if local:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_LOCAL, 0x00, len(tail)) + tail
    pair = _pair(src, dst)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_PROXY, 0x00, len(tail)) + tail
    a, b = pair
    body = a.packed + b.packed + struct.pack("!HH", int(src[1]), int(dst[1])) + tail
    fam = 0x11 if a.version == 4 else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _CMD_PROXY, fam, len(body)) + body


def build(version: str, src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """The PROXY header announcing a connection from ``src`` to ``dst``; version "v1" or "v2".

    ``src`` is the client's (ip, port), ``dst`` the address it connected to (our listener).
    """
    if version == "v1":
        return build_v1(src, dst)
    if version == "v2":
        return build_v2(src, dst)
    raise ValueError('PROXY protocol version must be "v1" or "v2", got %r' % (version,))


# --------------------------------------------------------------------------- reading

class ProxyHeaderReader:
    """Incremental reader of one PROXY header (v1 or v2, detected from the first bytes).

    ``feed(data)`` returns None until the header is complete, then the ``ProxyInfo``; the
    bytes after it are in ``leftover``. Malformed input raises ``ProxyHeaderError``, and so
    does every later call. Feeding after the header is complete is an error too (the
    caller owns the stream by then).
    """

    __slots__ = ("buf", "info", "leftover", "error", "max_v2_payload")

    def __init__(self, max_v2_payload: int = MAX_V2_PAYLOAD) -> None:
        self.buf = bytearray()
        self.info: ProxyInfo | None = None
        self.leftover = b""
        self.error: ProxyHeaderError | None = None
        self.max_v2_payload = max_v2_payload

    @property
    def buffered(self) -> int:
        """Bytes received so far without a complete header."""
        return len(self.buf)

    def feed(self, data) -> ProxyInfo | None:
        if self.error is not None:
            raise self.error
        if self.info is not None:
            raise RuntimeError("the PROXY header is already complete")
        self.buf += data
        try:
            result = self._parse()
        except ProxyHeaderError as exc:
            self.error = exc
            self.buf.clear()
            raise
        if result is not None:
            info, end = result
            self.info = info
            self.leftover = bytes(self.buf[end:])
            self.buf.clear()
        return self.info

    def _parse(self) -> tuple[ProxyInfo, int] | None:
        buf = self.buf
        kind = looks_like_proxy_header(buf)
        if kind is None:
            return None
        if kind is False:
            raise ProxyHeaderError("not a PROXY header: starts with %r" % bytes(buf[:12]))
        if buf.startswith(V1_PREFIX):
            return _parse_v1(buf)
        return _parse_v2(buf, self.max_v2_payload)


def parse(data) -> tuple[ProxyInfo | None, bytes]:
    """One-shot: (info, leftover) from ``data``; info None when ``data`` is incomplete."""
    reader = ProxyHeaderReader()
    info = reader.feed(data)
    return info, reader.leftover


# -- v1 ----------------------------------------------------------------------------------

def _parse_v1(buf: bytearray) -> tuple[ProxyInfo, int] | None:
    end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        lf = buf.find(b"\n", 0, V1_MAX_LENGTH)
        if lf >= 0:
            raise ProxyHeaderError("PROXY v1 line ends with a bare LF (CRLF expected)")
        if len(buf) >= V1_MAX_LENGTH:
            raise ProxyHeaderError("PROXY v1 line longer than %d bytes" % V1_MAX_LENGTH)
        return None
    length = end + 2
    try:
        line = bytes(buf[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The spec: everything after UNKNOWN up to the CRLF is ignored.
        return ProxyInfo(1, "PROXY", "UNKNOWN", None, None, length), length
    if len(parts) != 6:
        raise ProxyHeaderError("PROXY v1 line needs 6 fields separated by single spaces, got %r" % line)
    _, proto, src_ip, dst_ip, src_port, dst_port = parts
    if proto not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got %r" % proto)
    version = 4 if proto == "TCP4" else 6
    src = (_v1_address(src_ip, version, "source"), _v1_port(src_port, "source"))
    dst = (_v1_address(dst_ip, version, "destination"), _v1_port(dst_port, "destination"))
    return ProxyInfo(1, "PROXY", proto, src, dst, length), length


def _v1_address(text: str, version: int, what: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 %s address %r is not an IPv%d address" % (what, text, version)) from None
    return str(addr)


def _v1_port(text: str, what: str) -> int:
    if not (1 <= len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > 65535:
        raise ProxyHeaderError("PROXY v1 %s port %r is not a number in 0..65535" % (what, text))
    return int(text)


# -- v2 ----------------------------------------------------------------------------------

def _parse_v2(buf: bytearray, max_payload: int) -> tuple[ProxyInfo, int] | None:
    if len(buf) < _V2_HEAD:
        # Reject a wrong version/command/family as soon as its byte arrives.
        if len(buf) > 12:
            _v2_check_ver_cmd(buf[12])
        if len(buf) > 13:
            _v2_check_family(buf[13])
        return None
    ver_cmd, fam, payload_len = struct.unpack_from("!BBH", buf, 12)
    command = _v2_check_ver_cmd(ver_cmd)
    family = _v2_check_family(fam)
    if payload_len > max_payload:
        raise ProxyHeaderError("PROXY v2 header announces %d bytes (limit %d)" % (payload_len, max_payload))
    total = _V2_HEAD + payload_len
    if len(buf) < total:
        return None
    payload = bytes(buf[_V2_HEAD:total])
    af = fam >> 4
    if command == "LOCAL":
        # Health checks and the like: the addresses (if any) must be ignored.
        return ProxyInfo(2, "LOCAL", _FAMILY_NAMES[fam], None, None, total, _tlvs(payload, _ADDRESS_SIZES[af], True)), total
    need = _ADDRESS_SIZES[af]
    if payload_len < need:
        raise ProxyHeaderError("PROXY v2 %s addresses need %d bytes, header has %d"
                               % (_FAMILY_NAMES[fam], need, payload_len))
    src = dst = None
    if af == _AF_INET:
        src = (str(ipaddress.IPv4Address(payload[0:4])), int.from_bytes(payload[8:10], "big"))
        dst = (str(ipaddress.IPv4Address(payload[4:8])), int.from_bytes(payload[10:12], "big"))
    elif af == _AF_INET6:
        src = (str(ipaddress.IPv6Address(payload[0:16])), int.from_bytes(payload[32:34], "big"))
        dst = (str(ipaddress.IPv6Address(payload[16:32])), int.from_bytes(payload[34:36], "big"))
    # AF_UNSPEC and AF_UNIX: no IP address to use; the receiver keeps the real peer.
    return ProxyInfo(2, "PROXY", _FAMILY_NAMES[fam], src, dst, total, _tlvs(payload, need, False)), total


def _v2_check_ver_cmd(ver_cmd: int) -> str:
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 version nibble must be 2, got %d" % (ver_cmd >> 4))
    cmd = ver_cmd & 0x0F
    if cmd == _CMD_LOCAL:
        return "LOCAL"
    if cmd == _CMD_PROXY:
        return "PROXY"
    raise ProxyHeaderError("PROXY v2 command must be LOCAL (0) or PROXY (1), got %d" % cmd)


def _v2_check_family(fam: int) -> str:
    name = _FAMILY_NAMES.get(fam)
    if name is None:
        raise ProxyHeaderError("PROXY v2 address family/protocol byte 0x%02x is not defined" % fam)
    return name


def _tlvs(payload: bytes, start: int, lenient: bool) -> tuple[tuple[int, bytes], ...]:
    """Split the TLVs after the addresses. A truncated TLV is an error, except in a LOCAL
    header, whose content the receiver must skip anyway."""
    out = []
    pos, n = start, len(payload)
    while pos < n:
        if pos + 3 > n:
            if lenient:
                break
            raise ProxyHeaderError("PROXY v2 TLV truncated at byte %d" % (_V2_HEAD + pos))
        t, length = payload[pos], int.from_bytes(payload[pos + 1:pos + 3], "big")
        if pos + 3 + length > n:
            if lenient:
                break
            raise ProxyHeaderError("PROXY v2 TLV type 0x%02x overruns the header" % t)
        out.append((t, payload[pos + 3:pos + 3 + length]))
        pos += 3 + length
    return tuple(out)
