"""A raw TCP member for the layer-4 tests, one behaviour per ``--mode``.

    python tcp_echo.py --name a [--port 0] [--mode echo]

Prints "READY <port>" once listening and "CONN <n>" for each accepted connection; other
lines per mode (all on stdout, flushed, so a test reads them from the member's output):

- echo        echo every byte; on the client's EOF, finish writing and close.
- greet       like echo, but first sends "HELLO <name> <n>\\n" (the server speaks first).
- eof-report  echo; on the client's EOF (half-close) send "EOF-SEEN <bytes received>\\n",
              then close: the client still reads after shutting down its write side.
- shut-first  on the first bytes: send "BYE\\n" and shut down the write side (FIN), then
              keep reading; on EOF print "TOTAL <n> <bytes received>" and close.
- rst         on the first bytes: reset the connection (SO_LINGER 0, then close): RST.
- watch       echo; print "EOF <n>" when the client's side ends with a FIN and
              "RESET <n>" when it ends with a reset (ECONNRESET).
- sink        read and count everything, never answer; print "TOTAL <n> <bytes>" at EOF.
- stall       accept and never read (the client's writes must pile up, then stop).
- flood       on the first bytes: send --flood-bytes bytes as fast as the connection takes
              them; print "STALLED <n> <bytes sent>" when a send has waited a second (the
              client is not reading), then finish and print "SENT <n> <bytes>".
"""

from __future__ import annotations

import argparse
import itertools
import socket
import struct
import threading


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="tcp")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="echo",
                    choices=["echo", "greet", "eof-report", "shut-first", "rst", "watch", "sink", "stall",
                             "flood"])
    ap.add_argument("--flood-bytes", type=int, default=64 * 1024 * 1024)
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(1024)
    print(f"READY {srv.getsockname()[1]}", flush=True)
    counter = itertools.count(1)
    lock = threading.Lock()
    while True:
        conn, _ = srv.accept()
        with lock:
            n = next(counter)
        print(f"CONN {n}", flush=True)
        threading.Thread(target=handle, args=(conn, n, args), daemon=True).start()


def say(line: str) -> None:
    print(line, flush=True)


def handle(conn: socket.socket, n: int, args) -> None:
    mode = args.mode
    total = 0
    try:
        if mode == "greet":
            conn.sendall(f"HELLO {args.name} {n}\n".encode())
        if mode == "rst":
            if conn.recv(65536):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            say(f"RST-SENT {n}")
            return
        if mode == "stall":
            threading.Event().wait()
        if mode == "flood":
            if not conn.recv(65536):
                conn.close()
                return
            chunk = bytes(range(256)) * 256  # 64 KiB
            view = memoryview(chunk)
            sent, stalled = 0, False
            conn.settimeout(1.0)
            while sent < args.flood_bytes:  # byte i of the stream is i % 256
                pos = sent % len(chunk)
                want = min(len(chunk) - pos, args.flood_bytes - sent)
                try:
                    sent += conn.send(view[pos:pos + want])
                except socket.timeout:
                    if not stalled:
                        stalled = True
                        say(f"STALLED {n} {sent}")
            say(f"SENT {n} {sent}")
            conn.close()
            return
        if mode == "shut-first":
            total = len(conn.recv(65536))
            conn.sendall(b"BYE\n")
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                total += len(data)
            say(f"TOTAL {n} {total}")
            conn.close()
            return
        while True:
            try:
                data = conn.recv(262144)
            except ConnectionResetError:
                say(f"RESET {n}")
                conn.close()
                return
            if not data:
                break
            total += len(data)
            if mode != "sink":
                conn.sendall(data)
        if mode == "eof-report":
            conn.sendall(f"EOF-SEEN {total}\n".encode())
        if mode == "watch":
            say(f"EOF {n}")
        if mode == "sink":
            say(f"TOTAL {n} {total}")
        conn.close()
    except OSError as exc:
        say(f"ERROR {n} {exc!r}")
        conn.close()


if __name__ == "__main__":
    main()
