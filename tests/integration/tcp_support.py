"""Helpers for the layer-4 (``mode = "tcp"``) and PROXY protocol integration tests.

Like support.py, nothing here imports wsproxy: PROXY headers are built by hand from
HAProxy's spec, so the proxy's reader is checked against the spec, not against itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import struct
import time
from pathlib import Path

from .support import HOST, Member, _toml_value, start_member, wait_until

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


# --------------------------------------------------------------------------- members

class TcpMembers:
    """Starts tests/integration/servers/tcp_echo.py (``--mode``) and proxy_header_member.py."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Member] = []

    def echo(self, name: str = "echo", mode: str = "echo") -> Member:
        m = start_member("tcp_echo.py", name, self.tmp_path, extra_args=("--mode", mode))
        self.started.append(m)
        return m

    def proxy_header(self, name: str = "pp") -> Member:
        m = start_member("proxy_header_member.py", name, self.tmp_path)
        self.started.append(m)
        return m

    def kill_all(self) -> None:
        for m in self.started:
            m.kill()


def output_lines(member: Member, prefix: str) -> list[str]:
    return [l for l in member.output().splitlines() if l.startswith(prefix)]


def conn_count(member: Member) -> int:
    return len(output_lines(member, "CONN "))


def wait_output(member: Member, pattern: str, timeout: float = 5.0) -> str | None:
    """The first line of the member's output matching the regex ``pattern`` (waits)."""
    rx = re.compile(pattern)
    return wait_until(lambda: next((l for l in member.output().splitlines() if rx.search(l)), None), timeout)


# --------------------------------------------------------------------------- site.conf

def tcp_conf(members: list[str], *, listener: dict | None = None, pool: dict | None = None,
             server: dict | None = None, extra: str = "") -> str:
    """A site.conf with one tcp listener "raw" on $PORT and its pool "backend"."""
    server = {"grace": "2s", "access_log": True, **(server or {})}
    listener = {"bind": f"{HOST}:$PORT", "mode": "tcp", "pool": "backend", **(listener or {})}
    pool = {"members": list(members), **(pool or {})}
    lines = ["[server]"] + [f"{k} = {_toml_value(v)}" for k, v in server.items()]
    lines += ["", "[listeners.raw]"] + [f"{k} = {_toml_value(v)}" for k, v in listener.items()]
    lines += ["", "[pools.backend]"] + [f"{k} = {_toml_value(v)}" for k, v in pool.items()]
    return "\n".join(lines) + "\n" + extra


# --------------------------------------------------------------------------- sockets

def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = s.recv(min(n - len(buf), 262144))
        if not data:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def recv_line(s: socket.socket, limit: int = 65536) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        data = s.recv(1)
        if not data:
            raise ConnectionError(f"EOF inside a line: {bytes(buf)!r}")
        buf += data
        if len(buf) > limit:
            raise ValueError("line too long")
    return bytes(buf)


def recv_json(s: socket.socket) -> dict:
    return json.loads(recv_line(s))


def recv_to_eof(s: socket.socket) -> bytes:
    """Everything until a clean EOF (a reset raises ConnectionResetError)."""
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def reset_close(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER on, 0 s)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def closed_within(s: socket.socket, timeout: float) -> tuple[bool, float]:
    """Does the peer close (EOF or reset) within ``timeout``? Also returns the time taken."""
    s.settimeout(timeout)
    start = time.monotonic()
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True, time.monotonic() - start
    except ConnectionResetError:
        return True, time.monotonic() - start
    except socket.timeout:
        return False, time.monotonic() - start


# --------------------------------------------------------------------------- PROXY headers

def proxy_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    if src is None:
        return b"PROXY UNKNOWN\r\n"
    fam = "TCP4" if ipaddress.ip_address(src[0]).version == 4 else "TCP6"
    return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def proxy_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False,
             tlvs: bytes = b"") -> bytes:
    if local or src is None:
        cmd, fam, body = (0x20 if local else 0x21), 0x00, b""
    else:
        a, b = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
        fam = 0x11 if a.version == 4 else 0x21
        body = a.packed + b.packed + struct.pack("!HH", src[1], dst[1])
        cmd = 0x21
    body += tlvs
    return V2_SIG + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


def proxy_header(version: str, src, dst) -> bytes:
    return proxy_v1(src, dst) if version == "v1" else proxy_v2(src, dst)


# --------------------------------------------------------------------------- logs

def settle(proxy, timeout: float = 3.0) -> None:
    """Wait for the access record of the readiness probe (start_proxy connects once to every
    listener port): after it, member connection counts and access records are the test's own."""
    wait_until(lambda: proxy.access_logs("tcp"), timeout)


def access_for(proxy, port: int, timeout: float = 5.0) -> dict | None:
    """The tcp access record of the client connection from local port ``port``."""
    return proxy.wait_log(lambda l: l.get("type") == "access" and l.get("kind") == "tcp"
                          and str(l.get("client", "")).endswith(":%d" % port), timeout)
