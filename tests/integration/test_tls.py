"""TLS (issue #7): termination on listeners (https, wss, SNI, ALPN, handshake timeout,
reload of certificates) and TLS to members (verify, SNI, mTLS, health checks).

Certificates are made on the fly with ``trustme`` (one CA per test module, plus a stranger
CA for verify failures); clients verify the chain against it, as a browser would against
its store.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
import trustme
from websockets.asyncio.client import connect as _ws_connect

from .support import HOST, REPO, base_env, closed_port, port_open, run, start_member, wait_until

pytestmark = pytest.mark.timeout(120)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_pair(tmp_path, cert, stem: str) -> tuple[str, str]:
    """``cert`` (a trustme LeafCert) as stem.pem (chain) and stem.key in tmp_path."""
    cert_path, key_path = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    return str(cert_path), str(key_path)


def write_ca(tmp_path, ca, stem: str = "ca") -> str:
    path = tmp_path / f"{stem}.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def client_context(ca, alpn=None, **kw) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    for name, value in kw.items():
        setattr(context, name, value)
    return context


def ws_connect(url: str, **kw):
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    return _ws_connect(url, **kw)


def tls_get(port: int, path: str, context: ssl.SSLContext, server_hostname: str = "localhost",
            headers: dict | None = None) -> tuple[int, dict, bytes, ssl.SSLSocket]:
    """One HTTPS request over a fresh connection: (status, headers lowercased -> [values], body, socket info)."""
    raw = socket.create_connection((HOST, port), timeout=10)
    s = context.wrap_socket(raw, server_hostname=server_hostname)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {server_hostname}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        info = {"cert": s.getpeercert(), "der": s.getpeercert(binary_form=True),
                "alpn": s.selected_alpn_protocol(), "version": s.version(), "compression": s.compression()}
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        found.setdefault(k.strip().lower(), []).append(v.strip())
    if "chunked" in ",".join(found.get("transfer-encoding", [])):
        body = _unchunk(body)
    return int(status_line.split()[1]), found, body, info


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def handshake_info(port: int, context: ssl.SSLContext, server_hostname: str | None) -> dict:
    """Complete a TLS handshake only: the certificate, ALPN and version the proxy chose."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as s:
            return {"cert": s.getpeercert(), "der": s.getpeercert(binary_form=True),
                    "alpn": s.selected_alpn_protocol(), "version": s.version()}


def sans(cert: dict) -> list[str]:
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


def metrics(admin: int) -> str:
    with _OPENER.open(f"http://{HOST}:{admin}/metrics", timeout=5) as r:
        return r.read().decode()


def rejections(admin: int, listener: str, reason: str) -> float:
    m = re.search(r'^wsproxy_rejections_total\{listener="%s",reason="%s"\} (\S+)$' % (listener, reason),
                  metrics(admin), re.M)
    return float(m.group(1)) if m else 0.0


def admin_port(p) -> int:
    port = int(p.config["server"]["admin"].rsplit(":", 1)[1])
    assert wait_until(lambda: port_open(port), 10), p.stderr_text()[-3000:]
    return port


def admin_json(admin: int, path: str):
    with _OPENER.open(f"http://{HOST}:{admin}{path}", timeout=5) as r:
        return json.loads(r.read())


_TLS_MEMBERS: list = []  # started by tls_member(), killed after each test (_kill_tls_members)


@pytest.fixture(autouse=True)
def _kill_tls_members():
    yield
    while _TLS_MEMBERS:
        _TLS_MEMBERS.pop().kill()


def tls_member(tmp_path, script: str, name: str, cert_key: tuple[str, str], *extra: str):
    member = start_member(script, name, tmp_path, extra_args=("--tls-cert", cert_key[0], "--tls-key", cert_key[1],
                                                               *extra))
    _TLS_MEMBERS.append(member)
    return member


def check(conf_text: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.conf"
    path.write_text(conf_text)
    return subprocess.run([sys.executable, "-m", "wsproxy", "check", "-c", str(path)], capture_output=True,
                          text=True, cwd=str(REPO), env=base_env(), timeout=60)


def site(tmp_path, ca, members: list[str], *, listener: str = "", pool: str = "", server: str = "",
         tls: str = "", names=("localhost",)) -> str:
    """A config with one TLS listener ("public", certificate for ``names``) in front of ``members``;
    ``listener``, ``pool``, ``server``: more lines for those tables, ``tls``: more keys of ``tls``."""
    cert, key = write_pair(tmp_path, ca.issue_cert(*names), "site")
    more = f", {tls}" if tls else ""
    return f"""
[server]
{server}
[listeners.public]
bind = "127.0.0.1:$PORT"
tls = {{ cert = "{cert}", key = "{key}"{more} }}
routes = [{{ pool = "web" }}]
{listener}
[pools.web]
members = {json.dumps(members)}
{pool}
"""


# --------------------------------------------------------------------------- termination: wss and https

@pytest.mark.parametrize("relay", ["track", "raw", "inspect"])
def test_wss_echo_through_termination(proxy, members, tmp_path, ca, relay):
    """The websockets client verifies the proxy's chain; text, binary, a 1 MiB message each
    way, many small ones, and a 4 MiB flood from the member (one-way, through backpressure)."""
    ws = members.ws("a")
    p = proxy(site(tmp_path, ca, [ws.addr], pool=f'relay = "{relay}"'))

    async def go():
        async with ws_connect(f"wss://localhost:{p.port}/echo", ssl=client_context(ca)) as c:
            await c.send("hello")
            assert await c.recv() == "hello"
            await c.send(b"\x00\x01binary")
            assert await c.recv() == b"\x00\x01binary"
            big = os.urandom(MIB)
            await c.send(big)
            assert await c.recv() == big
            for i in range(500):
                await c.send(f"m{i}")
            got = [await c.recv() for _ in range(500)]
            assert got == [f"m{i}" for i in range(500)]
        async with ws_connect(f"wss://localhost:{p.port}/flood?mb=4&chunk=256", ssl=client_context(ca)) as c:
            total = 0
            while True:
                message = await c.recv()
                if message == "done":
                    break
                total += len(message)
            assert total == 4 * MIB
    run(go())
    logs = p.access_logs("ws")
    assert len(logs) == 2 and all(l["status"] == 101 for l in logs)


def test_https_forwarding_headers_secure_cookie_and_hsts(proxy, members, tmp_path, ca):
    http = members.http("h")
    p = proxy(site(tmp_path, ca, [http.addr], pool='persist = { cookie = "SRV" }',
                   listener='hsts = { max_age = "30d", include_subdomains = true }'))
    status, headers, body, info = tls_get(p.port, "/headers", client_context(ca, alpn=["h2", "http/1.1"]))
    assert status == 200
    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert seen["x-forwarded-proto"] == "https"
    assert "proto=https" in seen["forwarded"]
    cookie = headers["set-cookie"][0]
    assert cookie.startswith("SRV=") and "Secure" in [part.strip() for part in cookie.split(";")]
    assert headers["strict-transport-security"] == ["max-age=2592000; includeSubDomains"]
    assert info["alpn"] == "http/1.1" and info["version"] in ("TLSv1.2", "TLSv1.3") and info["compression"] is None
    # The proxy's own answers carry it too: no route for this host is a 404 from the proxy.
    p2 = proxy(site(tmp_path, ca, ["127.0.0.1:%d" % closed_port()], listener="hsts = true"))
    status, headers, _body, _info = tls_get(p2.port, "/", client_context(ca))
    assert status == 502 and headers["strict-transport-security"] == ["max-age=31536000"]


# --------------------------------------------------------------------------- SNI, ALPN, versions

def test_sni_picks_the_certificate_by_name(proxy, members, tmp_path, ca):
    """certs: the first entry (names from its certificate) is the default; an entry's names
    may be wildcards (one label); a top-level cert/key, when present, is the default instead."""
    http = members.http("h")
    a_cert, a_key = write_pair(tmp_path, ca.issue_cert("a.example"), "a")
    b_cert, b_key = write_pair(tmp_path, ca.issue_cert("*.b.example", "b.example"), "b")
    c_cert, c_key = write_pair(tmp_path, ca.issue_cert("c.example"), "c")
    certs = (f'certs = [{{ cert = "{a_cert}", key = "{a_key}" }}, '
             f'{{ cert = "{b_cert}", key = "{b_key}", names = ["*.b.example"] }}]')
    conf = f"""
[listeners.public]
bind = "127.0.0.1:$PORT"
tls = {{ {certs} }}
routes = [{{ pool = "web" }}]
[listeners.other]
bind = "127.0.0.1:$PORT2"
tls = {{ cert = "{c_cert}", key = "{c_key}", {certs} }}
routes = [{{ pool = "web" }}]
[pools.web]
members = ["{http.addr}"]
"""
    p = proxy(conf)
    public, other = p.ports["public"], p.ports["other"]
    verified = client_context(ca)
    unchecked = client_context(ca, check_hostname=False)
    assert sans(handshake_info(public, verified, "a.example")["cert"]) == ["a.example"]
    assert sans(handshake_info(public, verified, "x.b.example")["cert"]) == ["*.b.example", "b.example"]
    assert sans(handshake_info(public, verified, "X.B.Example")["cert"]) == ["*.b.example", "b.example"]
    # "b.example" is not in the entry's names (only "*.b.example"), "y.x.b.example" is two labels deep
    for name in ("b.example", "y.x.b.example", "unknown.example", None):
        assert sans(handshake_info(public, unchecked, name)["cert"]) == ["a.example"], name
    assert sans(handshake_info(other, unchecked, "unknown.example")["cert"]) == ["c.example"]
    assert sans(handshake_info(other, unchecked, None)["cert"]) == ["c.example"]
    assert sans(handshake_info(other, verified, "a.example")["cert"]) == ["a.example"]
    # and the request goes through with the chosen certificate
    status, _headers, body, _info = tls_get(public, "/", verified, server_hostname="z.b.example")
    assert status == 200 and body.startswith(b"h")


def test_alpn_versions_and_ciphers(proxy, members, tmp_path, ca):
    http = members.http("h")
    p = proxy(site(tmp_path, ca, [http.addr]))
    assert handshake_info(p.port, client_context(ca, alpn=["h2", "http/1.1"]), "localhost")["alpn"] == "http/1.1"
    assert handshake_info(p.port, client_context(ca, alpn=["h2"]), "localhost")["alpn"] is None  # never h2
    assert handshake_info(p.port, client_context(ca), "localhost")["alpn"] is None
    tls12 = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert handshake_info(p.port, tls12, "localhost")["version"] == "TLSv1.2"  # the default minimum
    assert handshake_info(p.port, client_context(ca), "localhost")["version"] == "TLSv1.3"

    cert, key = write_pair(tmp_path, ca.issue_cert("localhost"), "strict")
    strict = proxy(f"""
[listeners.v13]
bind = "127.0.0.1:$PORT"
tls = {{ cert = "{cert}", key = "{key}", min_version = "1.3" }}
routes = [{{ pool = "web" }}]
[listeners.gcm]
bind = "127.0.0.1:$PORT2"
tls = {{ cert = "{cert}", key = "{key}", ciphers = "ECDHE+AESGCM" }}
routes = [{{ pool = "web" }}]
[pools.web]
members = ["{http.addr}"]
""")
    with pytest.raises(ssl.SSLError):
        handshake_info(strict.ports["v13"], client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2), "localhost")
    assert handshake_info(strict.ports["v13"], client_context(ca), "localhost")["version"] == "TLSv1.3"
    chacha = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    chacha.set_ciphers("ECDHE+CHACHA20")
    with pytest.raises(ssl.SSLError):
        handshake_info(strict.ports["gcm"], chacha, "localhost")
    assert "GCM" in _cipher(strict.ports["gcm"], tls12)
    logs = [l for l in strict.logs() if l.get("msg") == "TLS handshake failed"]
    assert len(logs) == 2, logs


def _cipher(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            return s.cipher()[0]


# --------------------------------------------------------------------------- bad files are config errors

def test_bad_certificate_files_are_config_errors(tmp_path, ca):
    good_cert, good_key = write_pair(tmp_path, ca.issue_cert("localhost"), "good")
    _other_cert, other_key = write_pair(tmp_path, ca.issue_cert("other"), "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    missing = tmp_path / "missing.pem"
    conf = f"""
[listeners.missing]
bind = "127.0.0.1:{closed_port()}"
tls = {{ cert = "{missing}", key = "{good_key}" }}
routes = [{{ pool = "web" }}]
[listeners.garbage]
bind = "127.0.0.1:{closed_port()}"
tls = {{ cert = "{garbage}", key = "{good_key}" }}
routes = [{{ pool = "web" }}]
[listeners.mismatch]
bind = "127.0.0.1:{closed_port()}"
tls = {{ certs = [{{ cert = "{good_cert}", key = "{other_key}" }}] }}
routes = [{{ pool = "web" }}]
[pools.web]
members = ["127.0.0.1:9"]
tls = {{ ca = "{garbage}" }}
"""
    result = check(conf, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "4 error(s)" in err, err
    assert f'listeners.missing.tls.cert: cannot read "{missing}": No such file or directory' in err
    assert f'listeners.garbage.tls.cert: "{garbage}" is not a PEM certificate' in err
    assert f'listeners.mismatch.tls.certs[0].key: "{other_key}" does not match the certificate "{good_cert}"' in err
    assert f'pools.web.tls.ca: "{garbage}" is not a PEM CA bundle' in err
    # and the proxy refuses to start with the same words
    path = tmp_path / "run.conf"
    path.write_text(conf)
    started = subprocess.run([sys.executable, "-m", "wsproxy", "-c", str(path)], capture_output=True, text=True,
                             cwd=str(REPO), env=base_env(), timeout=60)
    assert started.returncode == 1 and "listeners.missing.tls.cert: cannot read" in started.stderr


# --------------------------------------------------------------------------- handshakes that never finish

def _client_hello(ca) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _closed_after(port: int, send: bytes, limit: float, source: str | None = None) -> float:
    """Connect (from ``source``), send ``send``, wait for the proxy to close; the seconds it took."""
    started = time.monotonic()
    with socket.create_connection((HOST, port), timeout=limit,
                                  source_address=(source, 0) if source else None) as s:
        if send:
            s.sendall(send)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


def test_handshake_timeout_and_failures_are_counted(proxy, members, tmp_path, ca):
    http = members.http("h")
    p = proxy(site(tmp_path, ca, [http.addr], server='admin = "127.0.0.1:$PORT2"', tls='handshake_timeout = "1s"'))
    admin = admin_port(p)
    # connect-and-close (a balancer's TCP check): no failed handshake
    socket.create_connection((HOST, p.port), timeout=5).close()
    hello = _client_hello(ca)
    silent = _closed_after(p.port, b"", 10)
    half = _closed_after(p.port, hello[: len(hello) // 2], 10)
    assert 0.9 <= silent <= 3.0 and 0.9 <= half <= 3.0, (silent, half)
    assert _closed_after(p.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 10) < 1.0  # plain HTTP: refused at once
    assert wait_until(lambda: rejections(admin, "public", "tls_handshake") == 3, 5), metrics(admin)
    failed = [l for l in p.logs() if l.get("msg") == "TLS handshake failed"]
    assert [l["level"] for l in failed] == ["info"] * 3 and all(l["listener"] == "public" for l in failed)
    reasons = [l["reason"] for l in failed]
    assert reasons[0].startswith("no handshake within 1s") and reasons[1].startswith("no handshake within 1s")
    assert "HTTP_REQUEST" in reasons[2] or "http request" in reasons[2].lower(), reasons
    # the listener still serves
    assert tls_get(p.port, "/", client_context(ca))[0] == 200
    assert rejections(admin, "public", "tls_handshake") == 3


# --------------------------------------------------------------------------- reload

def _reload_conf(cert: str, key: str, member: str, workers: int) -> str:
    return f"""
[server]
workers = {workers}
[listeners.public]
bind = "127.0.0.1:$PORT"
tls = {{ cert = "{cert}", key = "{key}" }}
routes = [{{ pool = "web" }}]
[pools.web]
members = ["{member}"]
"""


def _reloaded(p, generation: int) -> dict | None:
    return p.wait_log(lambda r: r.get("msg", "").startswith("reloaded") and r.get("generation") == generation, 20)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_picks_up_new_certificates_without_dropping_connections(proxy, members, tmp_path, ca, workers):
    """SIGHUP with new files at the same paths: a live wss connection keeps going; a new
    handshake gets the new certificate. A reload whose new key does not match is refused,
    and the running certificate stays."""
    ws = members.ws("a")
    first = ca.issue_cert("localhost")
    cert, key = write_pair(tmp_path, first, "site")
    p = proxy(_reload_conf(cert, key, ws.addr, workers))
    context = client_context(ca)
    old_der = handshake_info(p.port, context, "localhost")["der"]

    async def go():
        async with ws_connect(f"wss://localhost:{p.port}/echo", ssl=context) as live:
            await live.send("before")
            assert await live.recv() == "before"
            assert live.transport.get_extra_info("ssl_object").getpeercert(True) == old_der
            write_pair(tmp_path, ca.issue_cert("localhost"), "site")  # new files, same paths
            os.kill(p.proc.pid, signal.SIGHUP)
            assert await asyncio.to_thread(_reloaded, p, 2), p.stderr_text()[-3000:]
            new_der = await asyncio.to_thread(handshake_info, p.port, context, "localhost")
            assert new_der["der"] != old_der
            for i in range(20):  # the live connection is untouched
                await live.send(f"after {i}")
                assert await live.recv() == f"after {i}"
            big = os.urandom(MIB)
            await live.send(big)
            assert await live.recv() == big

            # a bad new key: refused, generation 2 keeps serving its certificate
            (tmp_path / "site.key").write_bytes(ca.issue_cert("localhost").private_key_pem.bytes())
            os.kill(p.proc.pid, signal.SIGHUP)
            rejected = await asyncio.to_thread(
                p.wait_log, lambda r: r.get("msg", "").startswith("  listeners.public.tls.key"), 20)
            assert rejected and "does not match the certificate" in rejected["msg"], p.stderr_text()[-3000:]
            again = await asyncio.to_thread(handshake_info, p.port, context, "localhost")
            assert again["der"] == new_der["der"]
            await live.send("still")
            assert await live.recv() == "still"
            async with ws_connect(f"wss://localhost:{p.port}/echo", ssl=context) as fresh:
                await fresh.send("fresh")
                assert await fresh.recv() == "fresh"
    run(go())
    assert not [l for l in p.logs() if l.get("msg") == "TLS handshake failed"]


# --------------------------------------------------------------------------- TLS to members

def _member_conf(member: str, tls: str, extra_pool: str = "", listener_tls: str = "") -> str:
    return f"""
[server]
admin = "127.0.0.1:$PORT9"
[listeners.public]
bind = "127.0.0.1:$PORT"
{listener_tls}
routes = [{{ pool = "web" }}]
[pools.web]
members = ["{member}"]
tls = {tls}
retries = 0
{extra_pool}
"""


def test_tls_to_members_http_and_websocket(proxy, members, tmp_path, ca):
    """Members behind TLS: the proxy checks the member's chain against ``ca`` and its
    address (an IP member: the certificate's IP address) or ``sni``; both legs of a
    WebSocket can be TLS."""
    ca_path = write_ca(tmp_path, ca)
    by_ip = write_pair(tmp_path, ca.issue_cert("127.0.0.1"), "member-ip")
    http = tls_member(tmp_path, "http_app.py", "h", by_ip)
    p = proxy(_member_conf(http.addr, f'{{ ca = "{ca_path}" }}'))
    status, _h, body = _plain_get(p.port, "/headers")
    assert status == 200 and json.loads(body)["headers"]

    by_name = write_pair(tmp_path, ca.issue_cert("member.test"), "member-name")
    ws = tls_member(tmp_path, "ws_echo.py", "w", by_name)
    site_cert, site_key = write_pair(tmp_path, ca.issue_cert("localhost"), "site")
    p2 = proxy(_member_conf(ws.addr, f'{{ ca = "{ca_path}", sni = "member.test" }}',
                            listener_tls=f'tls = {{ cert = "{site_cert}", key = "{site_key}" }}'))

    async def go():
        async with ws_connect(f"wss://localhost:{p2.port}/echo", ssl=client_context(ca)) as c:
            await c.send("over two TLS legs")
            assert await c.recv() == "over two TLS legs"
            big = os.urandom(MIB)
            await c.send(big)
            assert await c.recv() == big
            for i in range(300):
                await c.send(b"x%d" % i)
            assert [await c.recv() for _ in range(300)] == [b"x%d" % i for i in range(300)]
        async with ws_connect(f"wss://localhost:{p2.port}/flood?mb=2", ssl=client_context(ca)) as c:
            total = 0
            while (message := await c.recv()) != "done":
                total += len(message)
            assert total == 2 * MIB
    run(go())
    # the name is checked: the same member without sni (its IP is not in its certificate) fails
    p3 = proxy(_member_conf(ws.addr, f'{{ ca = "{ca_path}" }}'))
    status, _h, _body = _plain_get(p3.port, "/echo")
    assert status == 502
    assert p3.wait_log(lambda r: r.get("msg") == "member connect failed"
                       and "certificate verify failed: IP address mismatch" in r.get("error", ""))


def _plain_get(port: int, path: str) -> tuple[int, dict, bytes]:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _unchunk(body)
    return int(lines[0].split()[1]), headers, body


def test_member_verify_failure_is_a_failed_connect(proxy, members, tmp_path, ca):
    """A member whose certificate the pool's CA did not sign: 502, and the next member
    (retries) is tried as after any failed connect."""
    stranger = trustme.CA()
    ca_path = write_ca(tmp_path, ca)
    bad = tls_member(tmp_path, "http_app.py", "bad", write_pair(tmp_path, stranger.issue_cert("127.0.0.1"), "x"))
    good = tls_member(tmp_path, "http_app.py", "good", write_pair(tmp_path, ca.issue_cert("127.0.0.1"), "y"))
    p = proxy(_member_conf(bad.addr, f'{{ ca = "{ca_path}" }}'))
    status, _h, _b = _plain_get(p.port, "/")
    assert status == 502
    line = p.wait_log(lambda r: r.get("msg") == "member connect failed")
    assert line and line["error"].startswith("TLS: certificate verify failed"), line
    both = proxy(_member_conf(bad.addr, f'{{ ca = "{ca_path}" }}', extra_pool="").replace(
        f'members = ["{bad.addr}"]', f'members = ["{bad.addr}", "{good.addr}"]').replace("retries = 0", "retries = 1"))
    bodies = {_plain_get(both.port, "/")[2] for _ in range(4)}
    assert bodies == {b"good"}, bodies
    # verify = false: the stranger's certificate is accepted (TLS without authentication)
    loose = proxy(_member_conf(bad.addr, "{ verify = false }"))
    assert _plain_get(loose.port, "/") == (200, _plain_get(loose.port, "/")[1], b"bad")


def test_member_client_certificate_and_health_checks_over_tls(proxy, members, tmp_path, ca):
    """mTLS: a member that requires a client certificate gets the pool's; the http health
    check speaks TLS with the same settings (a wrong CA marks the member down)."""
    ca_path = write_ca(tmp_path, ca)
    member = tls_member(tmp_path, "http_app.py", "m", write_pair(tmp_path, ca.issue_cert("127.0.0.1"), "m"),
                        "--tls-client-ca", ca_path)
    client_cert, client_key = write_pair(tmp_path, ca.issue_cert("proxy.client"), "client")
    health = 'health = { type = "http", path = "/", interval = "500ms", timeout = "500ms", rise = 1, fall = 1 }'
    p = proxy(_member_conf(member.addr, f'{{ ca = "{ca_path}", cert = "{client_cert}", key = "{client_key}" }}',
                           extra_pool=health))
    status, _h, body = _plain_get(p.port, "/headers")
    assert status == 200 and json.loads(body)["client_cert"] == [["DNS", "proxy.client"]]
    admin = admin_port(p)

    def check_of(port):
        entry = admin_json(port, "/api/pools")["pools"]["web"]["members"][0]
        return entry if entry["checks_ok"] >= 2 or entry["checks_failed"] >= 1 else None
    entry = wait_until(lambda: check_of(admin), 10)
    assert entry and entry["checks_ok"] >= 2 and entry["checks_failed"] == 0 and entry["health"] == "up", entry

    # no client certificate: the member refuses the handshake -> 502
    nocert = proxy(_member_conf(member.addr, f'{{ ca = "{ca_path}" }}'))
    assert _plain_get(nocert.port, "/")[0] == 502
    # a health check with the wrong CA fails with the TLS reason, and the member goes down
    stranger_path = write_ca(tmp_path, trustme.CA(), "stranger")
    down = proxy(_member_conf(member.addr, f'{{ ca = "{stranger_path}", cert = "{client_cert}", '
                                           f'key = "{client_key}" }}', extra_pool=health))
    admin2 = admin_port(down)
    entry = wait_until(lambda: (lambda e: e if e["health"] == "down" else None)(
        admin_json(admin2, "/api/pools")["pools"]["web"]["members"][0]), 10)
    assert entry and entry["check"]["last_error"].startswith("TLS: certificate verify failed"), entry
    assert _plain_get(down.port, "/")[0] == 503


# --------------------------------------------------------------------------- tcp listeners, PROXY headers

def test_tcp_listener_terminates_and_originates_tls(proxy, members, tmp_path, ca):
    """mode = "tcp": TLS termination on the listener (the member gets the plain bytes), and
    TLS to the pool's members (the client's plain bytes go inside TLS)."""
    http = members.http("plain")
    https = tls_member(tmp_path, "http_app.py", "secure", write_pair(tmp_path, ca.issue_cert("127.0.0.1"), "m"))
    cert, key = write_pair(tmp_path, ca.issue_cert("localhost"), "site")
    ca_path = write_ca(tmp_path, ca)
    p = proxy(f"""
[listeners.terminate]
bind = "127.0.0.1:$PORT"
mode = "tcp"
pool = "plain"
tls = {{ cert = "{cert}", key = "{key}" }}
[listeners.originate]
bind = "127.0.0.1:$PORT2"
mode = "tcp"
pool = "secure"
[pools.plain]
members = ["{http.addr}"]
[pools.secure]
members = ["{https.addr}"]
tls = {{ ca = "{ca_path}" }}
""")
    status, _h, body, info = tls_get(p.ports["terminate"], "/", client_context(ca, alpn=["http/1.1"]))
    assert (status, body) == (200, b"plain") and info["alpn"] is None  # a tcp listener names no protocol
    status, _h, body = _plain_get(p.ports["originate"], "/")
    assert (status, body) == (200, b"secure")


def test_proxy_header_then_tls(proxy, members, tmp_path, ca):
    """accept_proxy on a TLS listener: the PROXY header comes first in plain text, and the
    ClientHello sent in the same segment is not lost; the header's client is the one forwarded."""
    http = members.http("h")
    p = proxy(site(tmp_path, ca, [http.addr], listener='accept_proxy = true\ntrusted_proxies = ["127.0.0.1"]'))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection((HOST, p.port), timeout=10) as s:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n" + outgoing.read())  # one segment
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    s.sendall(pending)
                data = s.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        s.sendall(outgoing.read())
        tls.write(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        s.sendall(outgoing.read())
        response = b""
        while True:
            try:
                data = tls.read(65536)
                if not data:  # the proxy's close_notify
                    break
                response += data
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                if not data:
                    break
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():
        body = _unchunk(body)
    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "203.0.113.7" and seen["x-forwarded-proto"] == "https"
    # anyone else (127.0.0.2 is not in trusted_proxies) starts TLS at once: a forged header
    # is a failed handshake
    forged = _closed_after(p.port, b"PROXY TCP4 198.51.100.1 127.0.0.1 1 2\r\n", 10, source="127.0.0.2")
    assert forged < 5
    line = p.wait_log(lambda r: r.get("msg") == "TLS handshake failed")
    assert line and line["client"].startswith("127.0.0.2:"), line
