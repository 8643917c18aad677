"""Headers a proxy must remove or add when it forwards a request (RFC 9110 §7.6, RFC 7239).

The proxy's own path works on names and plans, so the rewritten head is written in one pass
(``http_head.rewrite_head``) without intermediate header lists:

    hop = hop_by_hop_names(head.headers, head.names)
    drop, tail = forwarding_plan(head.headers, head.names, skip=hop, client_ip=peer,
                                 proto="https", host=head.get("host"), trusted=...)
    rewrite_head(request_line, head.headers, head.names, hop | drop, tail)

``strip_hop_by_hop`` and ``forwarded_headers`` give the same result as header lists (tests,
and anything that wants a list). For a WebSocket handshake the caller then adds back
``Upgrade: websocket`` and ``Connection: Upgrade``: they are hop-by-hop and are stripped like
the others.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable

__all__ = ["HOP_BY_HOP", "hop_by_hop_names", "strip_hop_by_hop", "TrustedProxies", "forwarding_plan",
           "forwarded_headers"]

Headers = list[tuple[str, str]]

# RFC 9110 §7.6.1, plus Keep-Alive and Proxy-Connection that old clients still send.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
# What a client could use to lie about where it is; dropped unless the peer is trusted.
_CLIENT_CLAIMS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
_CHAINS = frozenset({"x-forwarded-for", "forwarded"})  # folded into one header each, when trusted
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def hop_by_hop_names(headers: Headers, names: tuple[str, ...]) -> frozenset[str]:
    """HOP_BY_HOP and every name listed in Connection (lowercased); ``names`` are the headers'
    lowercased names. Usually just HOP_BY_HOP itself (``Connection: Upgrade``, ``keep-alive``)."""
    if "connection" not in names:
        return HOP_BY_HOP
    listed = {
        token.strip(" \t").lower()
        for i, key in enumerate(names) if key == "connection"
        for token in headers[i][1].split(",")
    }
    return HOP_BY_HOP if listed <= HOP_BY_HOP else HOP_BY_HOP | listed


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """A copy without hop-by-hop headers: HOP_BY_HOP and every name listed in Connection."""
    headers = list(headers)
    names = tuple(name.lower() for name, _ in headers)
    drop = hop_by_hop_names(headers, names)
    return [field for field, key in zip(headers, names) if key not in drop]


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


@functools.lru_cache(maxsize=4096)
def _client_text(ip: str) -> str:
    """The client address as X-Forwarded-For writes it (IPv4-mapped IPv6 as plain IPv4)."""
    address = _parse_ip(ip)
    return str(address) if address is not None else ip


def _forwarded_value(value: str) -> str:
    """A Forwarded parameter value: a token as is, anything else as a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=4096)
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


def forwarding_plan(
    headers: Headers, names: tuple[str, ...], *, skip: frozenset[str] = frozenset(), client_ip: str,
    proto: str, host: str | None, trusted: bool,
) -> tuple[frozenset[str], Headers]:
    """What this hop does to the forwarding headers: (lowercased names to drop, fields to
    append). ``skip``: names dropped anyway (hop-by-hop), which feed no chain.

    ``trusted`` (the peer is one of our own proxies): the client IP is appended to the incoming
    X-Forwarded-For and Forwarded chains (each folded into one header), and incoming
    X-Forwarded-Proto/-Host are kept. Not trusted: whatever the client sent in those headers,
    and X-Real-IP, is dropped and fresh values are set, so members never see a forged chain.
    IPv4-mapped IPv6 peers are written as plain IPv4.
    """
    client = _client_text(client_ip)
    if trusted:
        chain = [headers[i][1].strip() for i, key in enumerate(names)
                 if key == "x-forwarded-for" and key not in skip and headers[i][1].strip()]
        forwarded = [headers[i][1].strip() for i, key in enumerate(names)
                     if key == "forwarded" and key not in skip and headers[i][1].strip()]
        present = set(names) - skip
        drop = _CHAINS
    else:
        chain, forwarded, present = [], [], ()
        drop = _CLIENT_CLAIMS
    tail = [("X-Forwarded-For", ", ".join([*chain, client]) if chain else client)]
    if "x-forwarded-proto" not in present:
        tail.append(("X-Forwarded-Proto", proto))
    if host and "x-forwarded-host" not in present:
        tail.append(("X-Forwarded-Host", host))
    element = _forwarded_element(client_ip, proto, host)
    tail.append(("Forwarded", ", ".join([*forwarded, element]) if forwarded else element))
    return drop, tail


def forwarded_headers(
    headers: Iterable[tuple[str, str]], *, client_ip: str, proto: str, host: str | None, trusted: bool
) -> Headers:
    """A copy of ``headers`` with X-Forwarded-For/-Proto/-Host and Forwarded set for this hop
    (see ``forwarding_plan``)."""
    headers = list(headers)
    names = tuple(name.lower() for name, _ in headers)
    drop, tail = forwarding_plan(headers, names, client_ip=client_ip, proto=proto, host=host, trusted=trusted)
    return [field for field, key in zip(headers, names) if key not in drop] + tail
