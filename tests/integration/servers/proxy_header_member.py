"""A TCP member that expects a PROXY header (v1 or v2) first, for the PROXY protocol tests.

    python proxy_header_member.py --name a [--port 0]

It has its own small parser (it does not import wsproxy). For each connection it reads
the header, answers one JSON line, then echoes every later byte:

    {"name": "a", "version": 1, "command": "PROXY", "family": "TCP4",
     "src": ["127.0.0.1", 50312], "dst": ["127.0.0.1", 7000], "peer": ["127.0.0.1", 40022]}

(``src``/``dst`` are null for v1 UNKNOWN, v2 LOCAL or UNSPEC; ``peer`` is the TCP peer, the
proxy). A connection that does not start with a valid header gets
``{"name": "a", "error": "..."}`` and is closed. Prints "READY <port>" once listening and
"CONN <n>" per connection.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import socket
import threading

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="pp")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(1024)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    counter = itertools.count(1)
    while True:
        conn, peer = srv.accept()
        print(f"CONN {next(counter)}", flush=True)
        threading.Thread(target=handle, args=(conn, peer, args.name), daemon=True).start()


class BadHeader(Exception):
    pass


def read_header(conn: socket.socket) -> tuple[dict, bytes]:
    buf = b""
    while True:
        if buf.startswith(b"PROXY "):
            end = buf.find(b"\r\n")
            if end >= 0:
                return parse_v1(buf[:end].decode("ascii")), buf[end + 2:]
            if len(buf) >= 107:
                raise BadHeader("v1 line too long")
        elif buf.startswith(SIG):
            if len(buf) >= 16:
                length = int.from_bytes(buf[14:16], "big")
                if len(buf) >= 16 + length:
                    return parse_v2(buf[:16 + length]), buf[16 + length:]
        elif not (b"PROXY ".startswith(buf[:6]) or SIG.startswith(buf[:12])):
            raise BadHeader("no PROXY header: %r" % buf[:20])
        data = conn.recv(65536)
        if not data:
            raise BadHeader("closed before a complete header: %r" % buf[:40])
        buf += data


def parse_v1(line: str) -> dict:
    parts = line.split(" ")
    if parts[1] == "UNKNOWN":
        return {"version": 1, "command": "PROXY", "family": "UNKNOWN", "src": None, "dst": None}
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise BadHeader("bad v1 line %r" % line)
    _, fam, sip, dip, sport, dport = parts
    for ip in (sip, dip):
        ipaddress.ip_address(ip)
    return {"version": 1, "command": "PROXY", "family": fam, "src": [sip, int(sport)], "dst": [dip, int(dport)]}


def parse_v2(h: bytes) -> dict:
    ver_cmd, fam = h[12], h[13]
    if ver_cmd >> 4 != 2 or (ver_cmd & 15) not in (0, 1):
        raise BadHeader("bad v2 version/command 0x%02x" % ver_cmd)
    out = {"version": 2, "command": "LOCAL" if ver_cmd & 15 == 0 else "PROXY", "src": None, "dst": None}
    body = h[16:]
    if fam == 0x11:
        out["family"] = "TCP4"
        out["src"] = [str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")]
        out["dst"] = [str(ipaddress.IPv4Address(body[4:8])), int.from_bytes(body[10:12], "big")]
    elif fam == 0x21:
        out["family"] = "TCP6"
        out["src"] = [str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")]
        out["dst"] = [str(ipaddress.IPv6Address(body[16:32])), int.from_bytes(body[34:36], "big")]
    else:
        out["family"] = "0x%02x" % fam
    if out["command"] == "LOCAL":
        out["src"] = out["dst"] = None
    return out


def handle(conn: socket.socket, peer, name: str) -> None:
    try:
        try:
            info, rest = read_header(conn)
        except (BadHeader, ValueError, UnicodeDecodeError) as exc:
            conn.sendall((json.dumps({"name": name, "error": str(exc)}) + "\n").encode())
            return
        info = {"name": name, **info, "peer": [peer[0], peer[1]]}
        conn.sendall((json.dumps(info) + "\n").encode())
        if rest:
            conn.sendall(rest)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main()
