"""Helpers for the black-box integration tests: subprocesses, raw HTTP, raw WebSocket.

Nothing here imports wsproxy: the proxy is only ever run as ``python -m wsproxy``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
SERVERS = Path(__file__).resolve().parent / "servers"
HOST = "127.0.0.1"


def run(coro, timeout: float = 60.0):
    """Run a coroutine to completion in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on which nothing listens (bound once, then released)."""
    return free_port()


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    return env


# --------------------------------------------------------------------------- members

@dataclass
class Member:
    name: str
    proc: subprocess.Popen
    port: int
    out_path: Path
    record_path: Path | None = None

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def records(self) -> list[dict]:
        if self.record_path is None or not self.record_path.exists():
            return []
        out = []
        for line in self.record_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_record(self, pred: Callable[[dict], bool] = lambda r: True, timeout: float = 10.0) -> dict | None:
        found = wait_until(lambda: next((r for r in self.records() if pred(r)), None), timeout)
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def start_member(script: str, name: str, tmp_path: Path, *, record: bool = False,
                 extra_args: tuple[str, ...] = ()) -> Member:
    """Start tests/integration/servers/<script> on a free port; wait for "READY <port>"."""
    out_path = tmp_path / f"member-{name}-{time.monotonic_ns()}.out"
    record_path = tmp_path / f"member-{name}-{time.monotonic_ns()}.record" if record else None
    args = [sys.executable, str(SERVERS / script), "--name", name, "--port", "0", *extra_args]
    if record_path is not None:
        args += ["--record", str(record_path)]
    out = open(out_path, "wb")
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=base_env(), start_new_session=True)
    finally:
        out.close()
    member = Member(name, proc, 0, out_path, record_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = re.search(r"^READY (\d+)", out_path.read_text(errors="replace"), re.M)
        if m:
            member.port = int(m.group(1))
            return member
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    member.kill()
    raise RuntimeError(f"member {script} {name} did not start:\n{member.output()}")


# --------------------------------------------------------------------------- proxy

class ProxyStartError(RuntimeError):
    pass


@dataclass
class Proxy:
    proc: subprocess.Popen
    conf_path: Path
    stderr_path: Path
    ports: dict[str, int]
    config: dict
    stdout_path: Path | None = None
    exit_code: int | None = field(default=None)

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> list[dict]:
        out = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def access_logs(self, kind: str | None = None) -> list[dict]:
        return [l for l in self.logs() if l.get("type") == "access" and (kind is None or l.get("kind") == kind)]

    def wait_log(self, pred: Callable[[dict], bool], timeout: float = 5.0) -> dict | None:
        return wait_until(lambda: next((l for l in self.logs() if pred(l)), None), timeout)

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            _kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc, signal.SIGKILL)
                self.proc.wait(5)
        else:
            # the main process is gone; make sure no worker of its group survives
            _kill_group(self.proc, signal.SIGKILL)
        self.exit_code = self.proc.returncode
        return self.exit_code


def listener_ports(conf: dict) -> dict[str, int]:
    ports = {}
    for name, listener in conf.get("listeners", {}).items():
        bind = listener["bind"]
        ports[name] = int(bind.rsplit(":", 1)[1])
    return ports


def start_proxy(conf_text: str, tmp_path: Path, *, env: dict[str, str] | None = None,
                args: tuple[str, ...] = ("--log-format", "json"), attempts: int = 3) -> Proxy:
    """Write conf_text (``$PORT``, ``$PORT2``... replaced by free ports) and run the proxy.

    Waits until every listener port accepts TCP (10 s). Retries with new ports when the
    proxy dies early complaining that an address is in use.
    """
    if os.environ.get("WSPROXY_ITEST_DIRECT"):
        return _direct(conf_text, tmp_path)
    last_err = ""
    for attempt in range(attempts):
        text = conf_text
        for placeholder in sorted(set(re.findall(r"\$PORT\d*", text)), key=len, reverse=True):
            text = text.replace(placeholder, str(free_port()))
        conf_path = tmp_path / f"site-{attempt}.conf"
        conf_path.write_text(text)
        conf = tomllib.loads(text)
        ports = listener_ports(conf)
        stderr_path = tmp_path / f"proxy-{attempt}.stderr"
        stdout_path = tmp_path / f"proxy-{attempt}.stdout"
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsproxy", "-c", str(conf_path), *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=str(REPO),
                env=base_env(env), start_new_session=True,
            )
        proxy = Proxy(proc, conf_path, stderr_path, ports, conf, stdout_path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if all(port_open(p) for p in ports.values()):
                return proxy
            time.sleep(0.05)
        proxy.stop(timeout=3)
        last_err = proxy.stderr_text()
        if "in use" not in last_err.lower():
            break
    raise ProxyStartError(f"proxy did not become ready (exit code {proc.returncode}):\n{last_err[-5000:]}")


def rss_kb(pid: int) -> int:
    """VmRSS of a process and its children (worker processes), in KiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- raw HTTP

@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


def read_response(f, *, head_request: bool = False) -> RawResponse:
    """Read one HTTP/1.x response from a buffered binary file (socket.makefile('rb'))."""
    line = f.readline(65537)
    if not line:
        raise ConnectionError("connection closed before a status line")
    m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: ([^\r\n]*))?\r?\n$", line)
    if not m:
        raise ValueError(f"bad status line {line!r}")
    version, status, reason = m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1")
    headers = []
    while True:
        line = f.readline(65537)
        if not line:
            raise ConnectionError("connection closed inside the response head")
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    resp = RawResponse(version, status, reason, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return resp
    te = (resp.header("Transfer-Encoding") or "").lower()
    cl = resp.header("Content-Length")
    if "chunked" in te:
        body = bytearray()
        while True:
            size_line = f.readline(1024)
            if not size_line:
                raise ConnectionError("closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += _read_exact(f, size)
            f.readline(3)
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = _read_exact(f, int(cl))
    else:
        resp.body = f.read()
    return resp


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise ConnectionError(f"short body: wanted {n}, got {0 if data is None else len(data)}")
    return data


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send raw bytes on a new connection and read one response."""
    with connect(port, timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may answer and close before reading everything
        with s.makefile("rb") as f:
            return read_response(f)


def read_until_closed(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    chunks = []
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


# --------------------------------------------------------------------------- raw WebSocket

def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def ws_handshake_request(path: str = "/", host: str = "localhost", key: str | None = None,
                         version: str | None = "13", extra: list[tuple[str, str]] = ()) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw_ws_connect(port: int, path: str = "/", *, timeout: float = 10.0):
    """Open a WebSocket over a raw socket. Returns (socket, leftover bytes after the 101 head)."""
    s = connect(port, timeout)
    s.sendall(ws_handshake_request(path, key=ws_key()))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            s.close()
            raise ConnectionError(f"closed during handshake: {buf!r}")
        buf += data
    head, _, leftover = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        s.close()
        raise ConnectionError(f"handshake refused: {head!r}")
    return s, leftover


def build_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
                rsv: int = 0) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv & 0x70) | (opcode & 0x0F)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class FrameParser:
    """Incremental parser for frames received by a client (unmasked, but masks tolerated)."""

    def __init__(self, keep_payload: bool = True) -> None:
        self.buf = bytearray()
        self.keep_payload = keep_payload

    def feed(self, data: bytes) -> list[tuple[int, bool, bytes, int]]:
        """Returns a list of (opcode, fin, payload, payload_length)."""
        self.buf += data
        frames = []
        while True:
            buf = self.buf
            if len(buf) < 2:
                break
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            key = None
            if b1 & 0x80:
                if len(buf) < pos + 4:
                    break
                key = bytes(buf[pos:pos + 4])
                pos += 4
            if len(buf) < pos + n:
                break
            payload = bytes(buf[pos:pos + n]) if (self.keep_payload or (b0 & 0x0F) >= 8) else b""
            if key is not None and payload:
                payload = _mask(payload, key)
            frames.append((b0 & 0x0F, bool(b0 & 0x80), payload, n))
            del self.buf[:pos + n]
        return frames


def recv_frames_until(s: socket.socket, parser: FrameParser, pred, timeout: float = 10.0):
    """Read frames until pred(frame) is true; returns (matching frame or None, all frames)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        for fr in parser.feed(data):
            seen.append(fr)
            if pred(fr):
                return fr, seen
    return None, seen


def close_code_of(frame) -> int | None:
    payload = frame[2]
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0]
    return 1005


# --------------------------------------------------------------------------- site.conf

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def site_conf(pools: dict[str, dict | list], *, routes: list[dict] | None = None,
              listener: dict | None = None, server: dict | None = None,
              extra_listeners: dict[str, dict] | None = None) -> str:
    """A site.conf with one http listener "public" on $PORT.

    ``pools`` maps a pool name to either a list of member addresses or a dict of pool keys.
    ``routes`` defaults to a catch-all to the first pool.
    """
    server = {"grace": "2s", "access_log": True, **(server or {})}
    lines = ["[server]"] + [f"{k} = {_toml_value(v)}" for k, v in server.items()]
    listener = {"bind": f"{HOST}:$PORT", "mode": "http", **(listener or {})}
    if routes is None:
        routes = [{"pool": next(iter(pools))}]
    listener.setdefault("routes", routes)
    for name, body in {"public": listener, **(extra_listeners or {})}.items():
        lines += ["", f"[listeners.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    for name, pool in pools.items():
        if isinstance(pool, (list, tuple)):
            pool = {"members": list(pool)}
        lines += ["", f"[pools.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in pool.items()]
    return "\n".join(lines) + "\n"


def _direct(conf_text: str, tmp_path: Path) -> Proxy:
    """Debugging aid (WSPROXY_ITEST_DIRECT=1): no proxy at all; the "proxy" port is the first
    member of the first route's pool, to check the servers and helpers on their own."""
    conf = tomllib.loads(conf_text.replace("$PORT", "1"))
    listener = next(iter(conf["listeners"].values()))
    pool = conf["pools"][listener["routes"][-1]["pool"]]
    member = pool["members"][-1] if isinstance(pool, dict) else pool[-1]
    if isinstance(member, dict):
        member = member["addr"]
    port = int(member.rsplit(":", 1)[1])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            start_new_session=True)
    return Proxy(proc, tmp_path / "none.conf", tmp_path / "proxy-direct.stderr", {"public": port}, conf)


def full_duplex_request(port: int, head: bytes, body_parts=(), *, timeout: float = 30.0) -> RawResponse:
    """Send head + body parts from a thread while reading the response, so that a member
    that streams its answer while still reading (POST /echo) cannot deadlock the client."""
    import threading

    errors: list[BaseException] = []
    with connect(port, timeout) as s:
        def sender():
            try:
                s.sendall(head)
                for part in body_parts:
                    s.sendall(part)
            except BaseException as exc:  # reported after the response is read
                errors.append(exc)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        with s.makefile("rb") as f:
            resp = read_response(f)
        t.join(timeout)
    if errors:
        raise errors[0]
    return resp


# --------------------------------------------------------------------------- processes

def children(pid: int) -> list[int]:
    """The child pids of ``pid`` (a master's workers), from /proc."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (Z = zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# --------------------------------------------------------------------------- rejections

def rejections(admin_port: int) -> dict[tuple[str, str], float]:
    """{(listener, reason): count} of ``wsproxy_rejections_total`` from the admin /metrics."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{admin_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^wsproxy_rejections_total\{listener="([^"]*)",reason="([^"]*)"\} (\S+)$', line)
        if m:
            out[(m.group(1), m.group(2))] = float(m.group(3))
    return out


def rejection_deltas(after: dict, before: dict) -> dict[tuple[str, str], float]:
    """The series that changed between two ``rejections`` snapshots, with their increase."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def connect_from(source_ip: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the proxy from ``source_ip`` (any 127.x.y.z: Linux routes all of
    127/8 to the loopback device), so tests can be two clients with different addresses."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source_ip, 0))
    s.connect((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
