"""Headers a proxy must remove or add when it forwards a request (RFC 9110 §7.6, RFC 7239).

Typical use, in this order:

    headers = strip_hop_by_hop(head.headers)
    headers = forwarded_headers(headers, client_ip=peer, proto="https", host=head.get("host"),
                                trusted=listener_trust.contains(peer))

For a WebSocket handshake the shell then adds back ``Upgrade: websocket`` and
``Connection: Upgrade`` itself: they are hop-by-hop and are stripped like the others.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable

__all__ = ["HOP_BY_HOP", "strip_hop_by_hop", "TrustedProxies", "forwarded_headers"]

Headers = list[tuple[str, str]]

# RFC 9110 §7.6.1, plus Keep-Alive and Proxy-Connection that old clients still send.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
# What a client could use to lie about where it is; dropped unless the peer is trusted.
_CLIENT_CLAIMS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """A copy without hop-by-hop headers: HOP_BY_HOP and every name listed in Connection."""
    headers = list(headers)
    drop = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            drop.update(t.strip(" \t").lower() for t in value.split(","))
    return [(name, value) for name, value in headers if name.lower() not in drop]


@functools.lru_cache(maxsize=4096)
def _parse_ip(ip: str) -> IPAddress | None:
    """An address, with IPv4-mapped IPv6 (``::ffff:192.0.2.1``) unwrapped; None if invalid.

    Memoized: ipaddress parses in pure Python (~10 µs), and every request asks up to three
    times for its client's address, which repeats from request to request."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The peers (CIDR blocks) whose X-Forwarded-* and Forwarded headers are believed."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Iterable[str]) -> None:
        # ValueError on a bad CIDR: config validation reports it before we get here.
        self._networks = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)

    def contains(self, ip: str) -> bool:
        """Is ``ip`` (a peer address as the socket reports it) in a trusted block?"""
        if not self._networks:
            return False
        address = _parse_ip(ip)
        if address is None:
            return False
        return any(address in network for network in self._networks) or (
            # Also match a block written in IPv4-mapped form, e.g. ::ffff:10.0.0.0/104.
            isinstance(address, ipaddress.IPv4Address)
            and any(ipaddress.IPv6Address(f"::ffff:{address}") in n for n in self._networks)
        )

    def __bool__(self) -> bool:
        return bool(self._networks)


def _forwarded_value(value: str) -> str:
    """A Forwarded parameter value: a token as is, anything else as a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_element(client: str, proto: str, host: str | None) -> str:
    """``for=192.0.2.1;proto=http;host=example.com`` (RFC 7239 §4-§5)."""
    address = _parse_ip(client)
    if address is None:
        node = "unknown"
    elif address.version == 6:
        node = f"[{address}]"  # quoted below: brackets and colons are not token characters
    else:
        node = str(address)
    params = [f"for={_forwarded_value(node)}", f"proto={_forwarded_value(proto)}"]
    if host:
        params.append(f"host={_forwarded_value(host)}")
    return ";".join(params)


def forwarded_headers(
    headers: Iterable[tuple[str, str]], *, client_ip: str, proto: str, host: str | None, trusted: bool
) -> Headers:
    """A copy of ``headers`` with X-Forwarded-For/-Proto/-Host and Forwarded set for this hop.

    ``trusted`` (the peer is one of our own proxies): the client IP is appended to the incoming
    X-Forwarded-For and Forwarded chains (each folded into one header), and incoming
    X-Forwarded-Proto/-Host are kept. Not trusted: whatever the client sent in those headers,
    and X-Real-IP, is dropped and fresh values are set, so members never see a forged chain.
    IPv4-mapped IPv6 peers are written as plain IPv4.
    """
    address = _parse_ip(client_ip)
    client = str(address) if address is not None else client_ip
    headers = list(headers)
    if trusted:
        chain = [v.strip() for n, v in headers if n.lower() == "x-forwarded-for" and v.strip()]
        forwarded = [v.strip() for n, v in headers if n.lower() == "forwarded" and v.strip()]
        present = {n.lower() for n, _ in headers}
        out = [(n, v) for n, v in headers if n.lower() not in ("x-forwarded-for", "forwarded")]
    else:
        chain, forwarded, present = [], [], set()
        out = [(n, v) for n, v in headers if n.lower() not in _CLIENT_CLAIMS]
    out.append(("X-Forwarded-For", ", ".join([*chain, client])))
    if "x-forwarded-proto" not in present:
        out.append(("X-Forwarded-Proto", proto))
    if host and "x-forwarded-host" not in present:
        out.append(("X-Forwarded-Host", host))
    out.append(("Forwarded", ", ".join([*forwarded, _forwarded_element(client_ip, proto, host)])))
    return out
