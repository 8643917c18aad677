"""The value formats site.conf uses: durations, sizes and addresses.

Each ``parse_*`` raises ``ValueError`` with a message fit to follow a key path
("expected ..., got ..."); the loader turns it into a ConfigError. ``format_*`` go the
other way, for the plan that ``wsproxy check`` prints.
"""

from __future__ import annotations

import ipaddress
import json
import re

from wsproxy.config.schema import Address

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}  # "d": cookie ages

# Binary units are the ones people mean for buffers; decimal ones are accepted because
# "10KB" is a common way to write a size and silently reading it as 10240 would surprise.
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}

# A DNS name or an IPv4 literal: dot-separated labels of letters, digits, "-" and "_".
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parse_duration(text: str) -> float:
    """``"250ms"`` -> 0.25, ``"5s"`` -> 5.0, ``"2m"`` -> 120.0, ``"1h"`` -> 3600.0."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f'expected a duration like "250ms", "5s", "2m", "1h" or "1d", got {_q(text)}')
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def parse_size(value: str | int) -> int:
    """``"64KiB"`` -> 65536, ``"1MiB"`` -> 1048576, ``"10KB"`` -> 10000, ``"512"`` or 512 -> 512."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of zero or more bytes, got {value}")
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected a size like "64KiB", "1MiB" or a number of bytes, got {_q(str(value))}')
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])


def parse_address(text: str) -> Address:
    """``"127.0.0.1:8080"``, ``"localhost:80"`` or ``"[::1]:8080"`` -> Address(host, port)."""
    like = 'expected "host:port" like "127.0.0.1:8080" or "[::1]:8080"'
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise ValueError(f"{like}, got {_q(text)}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address inside the brackets, got {_q(text)}") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{like}, got {_q(text)} (no port)")
        if ":" in host:
            raise ValueError(f'IPv6 addresses need brackets, like "[::1]:8080", got {_q(text)}')
        if not host:
            raise ValueError(f"{like}, got {_q(text)} (empty host)")
        if not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{like}, got {_q(text)} (not a host name or IP address)")
        host = host.lower()
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535, got {_q(text)}")
    return Address(host, int(port_text))


def parse_cidr(text: str) -> str:
    """``"10.0.0.1"`` -> ``"10.0.0.1/32"``; ``"10.0.0.0/8"`` stays; host bits set is an error."""
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f'expected an IP address or CIDR like "10.0.0.0/8" or "::1", got {_q(text)}') from None
    raise ValueError(f"{_q(text)} has host bits set; did you mean {_q(str(loose))}?")


def is_host_name(text: str) -> bool:
    """True for a DNS name or IPv4 literal as written in an address (no port, no wildcard)."""
    return _HOST_NAME.fullmatch(text) is not None


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.25 -> "250ms", 120.0 -> "2m", 90.0 -> "90s"."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        count = seconds / scale
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    if seconds < 1:
        millis = seconds * 1000
        return f"{int(millis)}ms" if millis == int(millis) else f"{millis:g}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """65536 -> "64KiB", 1048576 -> "1MiB", 10000 -> "10000"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
