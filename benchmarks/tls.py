#!/usr/bin/env python3
"""wss through wsproxy and HAProxy (issue #7's TLS termination): the same load, medians.

    python benchmarks/tls.py                                # full run (~5 min), prints the section
    python benchmarks/tls.py --append benchmarks/RESULTS.md # ... and appends it (replaces an older one)
    python benchmarks/tls.py --quick                        # 1 repeat, short windows (~1.5 min)
    python benchmarks/tls.py --cases pingpong100 handshake --no-plain
    python benchmarks/tls.py --render reports/bench/tls-<stamp>.json   # re-render, no measuring

The machinery is run.py's (imported, not copied): the plain echo member (echo_member.py)
and the load client (load.py) pinned to CPU 1, one proxy at a time pinned to CPU 0, the
proxy's CPU as utime+stime of its process group from /proc over the window, a fresh
proxy for the idle case, proxies interleaved with the order rotating per repeat, medians
over the repeats, disturbed windows run again after a quiet wait, and wsproxy imported
from a copy of wsproxy/ taken at the start. What this file adds:

- certificates made at the start with trustme: an ECDSA P-256 CA and a leaf for
  ``localhost`` and ``127.0.0.1``; the same leaf and key serve every TLS endpoint;
- TLS on the proxies' listeners: wsproxy's generated conf (configs/wsproxy.conf, track
  relay, C build) gets ``tls = { cert, key }`` (its defaults: TLS 1.2-1.3, server cipher
  order, tickets on, ALPN http/1.1); HAProxy's (configs/haproxy.cfg) gets ``ssl crt <pem>
  alpn http/1.1`` on its bind, ``ssl-min-ver TLSv1.2`` and OpenSSL's default TLS 1.3 suite
  order spelled out, so both negotiate the same suite. The member behind either proxy
  speaks plain ws: TLS ends at the proxy;
- "direct": the client talks wss to a TLS echo member (``tls.py member``: echo_member.py's
  Echo on picows' server with the same certificate), the ceiling of this client;
- the client: ``tls.py client`` runs load.py's cases with picows' ``ssl_context`` (picows
  uses aiofastnet's TLS transport when installed, as here). Every connection is a full
  handshake (no session is offered back: the client keeps none), and the client counts
  the connections that resumed anyway (expected 0). The load client does not verify the
  certificate (that is the client's CPU, not the proxy's); one ``openssl s_client`` probe
  per TLS endpoint verifies it and reports version, suite, key exchange and tickets;
- the same proxies on plain ws in the same run (``--no-plain`` drops them), so the table
  also gives what TLS adds to each proxy's CPU and memory.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
sys.path.insert(0, str(HERE))

SECTION = "## TLS (issue #7): wss through wsproxy and HAProxy"
# OpenSSL's default TLS 1.3 suites, in its order; wsproxy cannot set them (Python cannot), so
# HAProxy is given the same list explicitly: with both preferring the server's order, both
# negotiate TLS_AES_256_GCM_SHA384 with a client that offers all three.
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"


# ============================================================================ the TLS client

def client_main(argv: list[str]) -> int:
    """load.py's cases over wss: load.ws_connect is wrapped to pass an SSL context."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--ca")
    ap.add_argument("--verify", action="store_true")
    mine, rest = ap.parse_known_args(argv)
    import logging
    import resource

    import load
    import uvloop

    a = load.parse_args(rest)
    tls: dict = {"conns": 0, "resumed": 0}
    if a.url.startswith("wss://"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if mine.verify:
            ctx.load_verify_locations(cafile=mine.ca)
        else:  # the proxy's work is the same; the client's certificate check is not measured
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        connect = load.ws_connect

        async def ws_connect(factory, url, **kw):
            t, listener = await connect(factory, url, ssl_context=ctx, **kw)
            so = t.underlying_transport.get_extra_info("ssl_object")
            if so is not None:
                tls["conns"] += 1
                tls["resumed"] += bool(so.session_reused)
                if "version" not in tls:
                    c = so.cipher()
                    tls.update(version=so.version(), cipher=c[0] if c else None)
            return t, listener

        load.ws_connect = ws_connect
    # load.main, with the TLS facts added to its JSON line
    logging.getLogger("picows").setLevel(logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    win = load.Window(load.Group(a.proxy_pgid or None), a.member_pid or None)
    result = uvloop.run(load.CASES[a.case](a, win))
    result = {"case": a.case, **result}
    if a.url.startswith("wss://"):
        result["tls"] = tls
    print(json.dumps(result), flush=True)
    os._exit(0)


# ============================================================================ the TLS echo member

def member_main(argv: list[str]) -> int:
    """echo_member.py's Echo behind picows' server with TLS (the "direct" baseline)."""
    ap = argparse.ArgumentParser(prog="tls.py member")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args(argv)
    import logging

    import echo_member
    import uvloop
    from picows import ws_create_server

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # wsproxy's listener settings (wsproxy/tls.py)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(a.cert, a.key)

    async def serve():
        server = await ws_create_server(
            lambda _request: echo_member.Echo(), a.host, a.port, ssl=ctx,
            max_frame_size=64 * 1024 * 1024, read_buffer_init_size=4096,
            websocket_handshake_timeout=30, backlog=4096, reuse_address=True)
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()

    logging.getLogger("picows").setLevel(logging.ERROR)
    echo_member._raise_nofile()
    uvloop.run(serve())
    return 0


# ============================================================================ the orchestrator

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("client", "member"):
    sys.exit(client_main(sys.argv[2:]) if sys.argv[1] == "client" else member_main(sys.argv[2:]))

import run  # noqa: E402
from run import LOAD_CPU, PROXY_CPU, Case, Figure, HarnessError, Proc, free_port, log  # noqa: E402


@dataclass(frozen=True)
class TVariant:
    id: str
    label: str
    kind: str        # direct | wsproxy | haproxy
    tls: bool
    base: str = ""   # the column its ratio is to


VARIANTS = [
    TVariant("direct", "direct (wss to a TLS echo member)", "direct", True, "haproxy"),
    TVariant("haproxy", "HAProxy (wss)", "haproxy", True),
    TVariant("wsproxy", "wsproxy track, C (wss)", "wsproxy", True, "haproxy"),
    TVariant("haproxy-plain", "HAProxy (plain ws)", "haproxy", False),
    TVariant("wsproxy-plain", "wsproxy track, C (plain ws)", "wsproxy", False, "haproxy-plain"),
]
VARIANT_BY_ID = {v.id: v for v in VARIANTS}

CASES = [
    Case("pingpong100", ("pingpong", "--conns", "100", "--size", "64")),
    Case("bulk1m", ("bulk", "--conns", "4", "--size", "1048576", "--inflight", "1")),
    Case("handshake", ("handshake", "--concurrency", "32")),
    Case("idle", ("idle", "--conns", "4000"), max_repeats=3),
]
CASE_BY_ID = {c.id: c for c in CASES}

FIGURES = [
    Figure("pingpong100", "rate", "64 B ping-pong, 100 conns: round trips/s", "higher", "{:,.0f}"),
    Figure("pingpong100", "p50_us", "64 B ping-pong, 100 conns: p50 latency, µs", "lower", "{:,.0f}"),
    Figure("pingpong100", "p99_us", "64 B ping-pong, 100 conns: p99 latency, µs", "lower", "{:,.0f}"),
    Figure("pingpong100", "cpu_us_per_op", "64 B ping-pong, 100 conns: proxy µs CPU per round trip", "lower",
           "{:,.1f}", proxy_only=True),
    Figure("bulk1m", "mb_per_s", "1 MiB messages, 4 conns: MB/s echoed", "higher", "{:,.0f}"),
    Figure("bulk1m", "cpu_ms_per_gb", "1 MiB messages: proxy ms CPU per GB relayed", "lower", "{:,.0f}",
           proxy_only=True),
    Figure("handshake", "rate", "handshakes/s (connect, TLS, upgrade, Close, close; 32 at a time)", "higher",
           "{:,.0f}"),
    Figure("handshake", "cpu_us_per_op", "handshake: proxy µs CPU per handshake", "lower", "{:,.0f}",
           proxy_only=True),
    Figure("idle", "kib_per_conn", "idle proxied WebSocket: proxy RSS KiB per connection", "lower", "{:,.1f}",
           proxy_only=True),
]
# what TLS adds: (case, field, label, format)
SURCHARGE = [
    ("pingpong100", "cpu_us_per_op", "µs CPU per 64 B round trip (100 conns)", "{:+,.1f}"),
    ("bulk1m", "cpu_ms_per_gb", "ms CPU per GB relayed (1 MiB messages)", "{:+,.0f}"),
    ("handshake", "cpu_us_per_op", "µs CPU per handshake", "{:+,.0f}"),
    ("idle", "kib_per_conn", "RSS KiB per idle WebSocket", "{:+,.1f}"),
]


def make_certs(d: Path) -> dict:
    """An ECDSA P-256 CA and a leaf for localhost / 127.0.0.1 (trustme: the test extra)."""
    try:
        import trustme
    except ImportError:
        raise HarnessError("trustme is not installed: pip install -e '.[test]' (make build does)") from None

    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem", "combined": d / "combined.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    paths["cert"].write_bytes(chain)
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    paths["combined"].write_bytes(chain + leaf.private_key_pem.bytes())  # HAProxy: chain + key in one file
    from cryptography import x509

    c = x509.load_pem_x509_certificate(chain)
    pub = c.public_key()
    curve = getattr(getattr(pub, "curve", None), "name", type(pub).__name__)
    info = {"key": f"ECDSA {curve}" if hasattr(pub, "curve") else curve,
            "signature": c.signature_hash_algorithm.name if c.signature_hash_algorithm else "?",
            "chain": f"{len(leaf.cert_chain_pems)} certificate(s), leaf signed by a trustme root"}
    return {k: str(v) for k, v in paths.items()} | {"info": info}


class TlsBench(run.Bench):
    """run.Bench with TLS on the proxies' listeners, a TLS echo member and the wss client."""

    def __init__(self, args, tmp: Path):
        super().__init__(args, tmp)
        self.certs = make_certs(tmp)
        self.tls_member: Proc | None = None
        self.tls_member_port = 0
        self.probes: dict = {}

    def start_tls_member(self) -> None:
        port = free_port()
        self.tls_member = Proc("tls-member", self.pinned(LOAD_CPU, [
            PY, str(HERE / "tls.py"), "member", "--port", str(port),
            "--cert", self.certs["cert"], "--key", self.certs["key"]]), self.tmp / "tls-member.log")
        self.tls_member_port = port
        self._wait_port(self.tls_member, port)

    def start_tproxy(self, v: TVariant) -> tuple[Proc | None, int]:
        if v.kind == "direct":
            return None, self.tls_member_port
        port = free_port()
        d = self.tmp / v.id
        d.mkdir(exist_ok=True)
        env = None
        maxconn = max(1000, (self.nofile - 200) // 2)
        if v.kind == "wsproxy":
            text = run.fill("wsproxy.conf", port=port, member_port=self.member_port, relay="track", extra="")
            if v.tls:
                bind = f'bind = "127.0.0.1:{port}"\n'
                if bind not in text:
                    raise HarnessError("configs/wsproxy.conf: no bind line to add tls to")
                text = text.replace(bind, bind + "tls = { cert = %s, key = %s }\n" % (
                    json.dumps(self.certs["cert"]), json.dumps(self.certs["key"])), 1)
            conf = d / "site.conf"
            conf.write_text(text)
            argv = [PY, "-m", "wsproxy", "-c", str(conf), "--log-level", "warning"]
            env = self.py_env()
        elif v.kind == "haproxy":
            text = run.fill("haproxy.cfg", port=port, member_port=self.member_port, maxconn=maxconn)
            if v.tls:
                text, n = re.subn(r"(?m)^(\s*bind 127\.0\.0\.1:%d)" % port,
                                  r"\1 ssl crt %s alpn http/1.1" % self.certs["combined"], text)
                if n != 1 or "\nglobal\n" not in text:
                    raise HarnessError("configs/haproxy.cfg: no bind line / global section to add ssl to")
                text = text.replace("\nglobal\n", "\nglobal\n"
                                    "    ssl-default-bind-options ssl-min-ver TLSv1.2\n"
                                    f"    ssl-default-bind-ciphersuites {TLS13_SUITES}\n", 1)
            conf = d / "haproxy.cfg"
            conf.write_text(text)
            argv = [self.haproxy, "-db", "-f", str(conf)]
        else:
            raise ValueError(v.kind)
        proc = Proc(v.id, self.pinned(PROXY_CPU, self.limited(argv)), self.tmp / f"{v.id}.log", env=env, cwd=d)
        self._wait_port(proc, port)
        return proc, port

    def current(self, v: TVariant) -> TVariant:
        self._v = v
        return v

    def _load_once(self, case: Case, port: int, proxy: Proc | None, extra: tuple = ()) -> dict:
        a = self.a
        v = self._v
        args = list(case.args)
        if case.id == "idle" and a.idle_conns:
            args += ["--conns", str(a.idle_conns)]
        member = self.tls_member if v.kind == "direct" else self.member
        scheme = "wss" if v.tls else "ws"
        argv = [PY, str(HERE / "tls.py"), "client", "--ca", self.certs["ca"], *(["--verify"] if a.verify else []),
                *args, "--url", f"{scheme}://127.0.0.1:{port}/", "--duration", str(a.duration),
                "--warmup", str(a.warmup), "--member-pid", str(member.p.pid),
                "--proxy-pgid", str(proxy.pgid if proxy else 0), *extra]
        return self._run_client(argv, "client", proxy)

    def probe(self, v: TVariant, port: int) -> dict:
        """One verified handshake with openssl s_client: version, suite, key exchange, tickets."""
        openssl = run.find_tool("openssl")
        if not openssl:
            return {"error": "openssl not installed"}
        argv = self.pinned(LOAD_CPU, [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                                      "localhost", "-CAfile", self.certs["ca"], "-verify_return_error",
                                      "-alpn", "http/1.1", "-ign_eof"])
        req = (b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        try:
            cp = subprocess.run(argv, input=req, capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            return {"error": "s_client timed out"}
        out = (cp.stdout + cp.stderr).decode(errors="replace")

        def grab(pattern):
            m = re.search(pattern, out, re.M)
            return m.group(1).strip() if m else None

        return {
            "protocol": grab(r"^New, (TLSv[\d.]+), Cipher is"),
            "cipher": grab(r"^New, TLSv[\d.]+, Cipher is (\S+)"),
            "key_exchange": grab(r"^Server Temp Key: (.+)$"),
            "signature": grab(r"^Peer signature type: (.+)$"),
            "alpn": grab(r"^ALPN protocol: (.+)$") or "none",
            "verify": grab(r"^Verify return code: (.+)$"),
            "tickets": out.count("Post-Handshake New Session Ticket arrived"),
            "status": grab(r"^(HTTP/1\.\d \d{3}[^\r\n]*)"),
        }


def run_tls_suite(bench: TlsBench, variants: list[TVariant], cases: list[Case]) -> dict:
    a = bench.a
    results: dict = {v.id: {c.id: [] for c in cases} for v in variants}
    runnable = [v for v in variants if not (v.kind == "haproxy" and not bench.haproxy)]
    flow = [c for c in cases if c.id != "idle"]
    idle = [c for c in cases if c.id == "idle"]
    for rep in range(a.repeat):
        k = rep % len(runnable)
        order = runnable[k:] + runnable[:k]
        for v in order:
            for group in (flow, idle):  # the idle case gets a fresh proxy, as in run.py
                group = [c for c in group if not c.max_repeats or rep < c.max_repeats]
                group = [c for c in group if not (c.id == "idle" and v.kind == "direct")]
                if not group:
                    continue
                proxy, port = bench.start_tproxy(bench.current(v))
                try:
                    if v.tls and v.id not in bench.probes:
                        bench.probes[v.id] = bench.probe(v, port)
                    for c in group:
                        r = bench.load(c, port, proxy)
                        r["repeat"] = rep
                        results[v.id][c.id].append(r)
                        t = r.get("tls") or {}
                        extra = f", {t.get('cipher')}, {t.get('resumed')}/{t.get('conns')} resumed" if t else ""
                        log(f"[{rep + 1}/{a.repeat}] {v.label:34} {c.id:12} {run.brief(c.id, r)}{extra}")
                finally:
                    if proxy is not None:
                        proxy.stop(grace=3.0)
    return results


# ============================================================================ the report

def medians(results: dict) -> dict:
    return {vid: {f"{f.case}.{f.field}": run.median_of(cs.get(f.case, []), f.field) for f in FIGURES}
            for vid, cs in results.items()}


def render(doc: dict) -> str:
    variants = [VARIANT_BY_ID[v] for v in doc["variants"]]
    results = doc["results"]
    med = medians(results)
    cases = set(doc["cases"])
    figs = [f for f in FIGURES if f.case in cases]
    tls_vs = [v for v in variants if v.tls]
    plain_vs = [v for v in variants if not v.tls]

    def cell(v, f):
        if f.proxy_only and v.kind == "direct":
            return "–"
        val = med.get(v.id, {}).get(f"{f.case}.{f.field}")
        if val is None:
            errs = [r for r in results.get(v.id, {}).get(f.case, []) if "error" in r]
            return "error" if errs else "–"
        text = f.fmt.format(val)
        base = med.get(v.base, {}).get(f"{f.case}.{f.field}") if v.base else None
        if base:
            text += f" ({val / base:.2f}×)"
        return text

    def table(vs):
        L = ["| figure | " + " | ".join(v.label for v in vs) + " |", "|---|" + "---:|" * len(vs)]
        for f in figs:
            L.append(f"| {f.label} {'↑' if f.better == 'higher' else '↓'} | " + " | ".join(cell(v, f) for v in vs) + " |")
        return "\n".join(L)

    m = doc["machine"]
    out = [SECTION, "",
           f"Generated by `benchmarks/tls.py` on {doc['date']} ({doc['elapsed_s'] / 60:.1f} min; commit "
           f"{m.get('commit', '?')}). Load average (1/5/15 min) at the start {doc['load_start']}, at the end "
           f"{doc['load_end']}; 2 CPUs. How to read it: benchmarks/README.md (the same machinery as run.py).",
           "", "```", doc["command"], "```", "",
           f"- machine: {m.get('CPU')}; kernel {m.get('kernel')}; {m.get('Python')}, uvloop {m.get('uvloop')}, "
           f"picows {m.get('picows (member and client)')} with aiofastnet {m.get('aiofastnet')} (client, members)",
           f"- OpenSSL: {m.get('OpenSSL (Python: wsproxy, client, TLS member)')} for wsproxy, the client and the TLS "
           f"member; HAProxy: {m.get('HAProxy OpenSSL')}",
           f"- wsproxy: {m.get('wsproxy')}; code measured: {m.get('code measured', 'the working tree')}",
           f"- HAProxy: {m.get('HAProxy')}",
           f"- certificate: {doc['cert']['key']}, signature hash {doc['cert']['signature']}, "
           f"{doc['cert']['chain']}; the same files for every TLS endpoint",
           f"- pinning: proxy on CPU {PROXY_CPU}; load client and echo member on CPU {LOAD_CPU} (taskset); "
           f"{doc['repeat']} repeat(s) (idle: at most 3), proxies interleaved, medians; window {doc['duration']:g} s "
           f"after {doc['warmup']:g} s of warm-up; idle case {doc['idle_conns']:,} connections",
           "- the member behind either proxy is echo_member.py on plain ws (TLS ends at the proxy); 'direct' is "
           "the client speaking wss to a TLS echo member (the same Echo on picows/aiofastnet TLS), the "
           "ceiling of this client and member",
           "- every connection is a full handshake: the client offers no session back "
           f"({doc['resumed'][0]} of {doc['resumed'][1]:,} TLS connections of the run resumed); the load client "
           "does not check the certificate" + (" (it did: --verify)" if doc.get("verify") else
                                               " (the s_client probe below does)"),
           "",
           "Negotiated (one `openssl s_client` probe per endpoint, offering all TLS 1.3 suites; the load "
           "client's own connections reported the same suite, listed under 'client saw'):", "",
           "| | " + " | ".join(v.label for v in tls_vs) + " |", "|---|" + "---|" * len(tls_vs)]
    for key, label in (("protocol", "protocol"), ("cipher", "cipher suite"), ("key_exchange", "key exchange"),
                       ("signature", "server signature"), ("alpn", "ALPN"), ("tickets", "session tickets sent"),
                       ("verify", "certificate check"), ("client", "client saw")):
        row = []
        for v in tls_vs:
            if key == "client":
                seen = sorted({f"{r['tls'].get('version')} {r['tls'].get('cipher')}" for cs in results.get(v.id, {}).values()
                               for r in cs if r.get("tls", {}).get("cipher")})
                row.append(", ".join(seen) or "–")
            else:
                p = doc["probes"].get(v.id, {})
                row.append(str(p.get(key, p.get("error", "–"))))
        out.append(f"| {label} | " + " | ".join(row) + " |")
    out += ["", "### wss (median; in brackets the ratio to HAProxy over wss)", "",
            "↑ higher is better, ↓ lower is better. Proxy CPU = utime+stime of the proxy's processes over the "
            "window (/proc).", "", table(tls_vs), ""]
    if plain_vs:
        out += ["### The same proxies on plain ws, same run (ratio to HAProxy plain)", "", table(plain_vs), ""]
        pairs = [(t, p) for t in tls_vs for p in plain_vs if t.kind == p.kind]
        S = ["| what TLS adds (wss − plain ws, medians) | " + " | ".join(t.label.replace(" (wss)", "") for t, _ in pairs)
             + " |", "|---|" + "---:|" * len(pairs)]
        for case, field, label, fmt in SURCHARGE:
            if case not in cases:
                continue
            row = []
            for t, p in pairs:
                a, b = med.get(t.id, {}).get(f"{case}.{field}"), med.get(p.id, {}).get(f"{case}.{field}")
                row.append(fmt.format(a - b) + (f" ({a / b:.1f}×)" if b else "") if a is not None and b is not None
                           else "–")
            S.append(f"| {label} | " + " | ".join(row) + " |")
        out += ["### What TLS costs each proxy (in brackets: wss / plain)", "", "\n".join(S), ""]
    # core use
    C = ["| case | " + " | ".join(v.label for v in variants) + " |", "|---|" + "---:|" * len(variants)]
    for c in [c for c in CASES if c.id in cases and c.id != "idle"]:
        cells = []
        for v in variants:
            rs = [r for r in results.get(v.id, {}).get(c.id, []) if "error" not in r and r.get("window_s")]
            if not rs:
                cells.append("–")
                continue
            pc = [r["proxy_cpu_s"] / r["window_s"] for r in rs if r.get("proxy_cpu_s") is not None]
            ks = [r["proxy_sys_s"] / r["proxy_cpu_s"] for r in rs if r.get("proxy_sys_s") is not None and r.get("proxy_cpu_s")]
            cc = [(r["member_cpu_s"] + r["client_cpu_s"]) / r["window_s"] for r in rs if r.get("member_cpu_s") is not None]
            p = (f"{100 * statistics.median(pc):.0f}%" + (f" ({100 * statistics.median(ks):.0f}% sys)" if ks else "")) if pc else "–"
            cells.append(f"{p} / {100 * statistics.median(cc):.0f}%" if cc else p)
        C.append(f"| {c.id} | " + " | ".join(cells) + " |")
    out += ["### Core use over the window: proxy core (kernel share) / client core (client + member)", "",
            "A client core near 100% means the load side set the pace: read CPU per unit of work then, not "
            "throughput. For 'direct' the first figure is empty (no proxy) and the second includes the TLS member.",
            "", "\n".join(C), ""]
    if doc["repeat"] > 1:
        S = ["| figure | " + " | ".join(v.label for v in variants) + " |", "|---|" + "---:|" * len(variants)]
        for f in figs:
            row = []
            for v in variants:
                s = run.spread_of(results.get(v.id, {}).get(f.case, []), f.field)
                row.append(f"{100 * s:.0f}%" if s is not None else "–")
            S.append(f"| {f.label} | " + " | ".join(row) + " |")
        out += ["### Spread across repeats ((max − min) / median)", "", "\n".join(S), ""]
    idle_fds = [f"{v.label} {run.median_of(results[v.id]['idle'], 'fds_per_conn'):.2f}"
                for v in variants if "idle" in results.get(v.id, {}) and run.median_of(results[v.id]["idle"], "fds_per_conn")]
    if idle_fds:
        out += ["Idle case sanity check, proxy fds per connection (2.00 expected): " + "; ".join(idle_fds) + ".", ""]
    problems = []
    for vid, cs in results.items():
        for cid, rs in cs.items():
            for r in rs:
                if "error" in r or r.get("warning"):
                    problems.append(f"- {VARIANT_BY_ID[vid].label} / {cid} (repeat {r.get('repeat', 0) + 1}): "
                                    f"{(r.get('error') or r.get('warning'))[:300]}")
    if problems:
        out += ["### Problems seen during the run", "", *problems, ""]
    if doc.get("notes"):
        out += ["### Reading it", "", doc["notes"].strip(), ""]
    return "\n".join(out)


def write_section(path: Path, text: str) -> None:
    """Append the section to ``path``, or replace the TLS section an earlier run left there."""
    old = path.read_text() if path.exists() else ""
    start = old.find("\n" + SECTION + "\n")
    if start >= 0:
        nxt = re.search(r"(?m)^## ", old[start + len(SECTION) + 2:])
        end = start + len(SECTION) + 2 + nxt.start() if nxt else len(old)
        new = old[:start + 1] + text.rstrip() + "\n" + ("\n" + old[end:] if nxt else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip() + "\n"
    path.write_text(new)


def machine(bench: TlsBench) -> dict:
    info = run.machine_info(bench)
    info.pop("NGINX", None)
    info["OpenSSL (Python: wsproxy, client, TLS member)"] = ssl.OPENSSL_VERSION
    try:
        import aiofastnet

        info["aiofastnet"] = getattr(aiofastnet, "__version__", "?")
    except ImportError:
        info["aiofastnet"] = "not installed (asyncio/uvloop TLS in the client)"
    if bench.haproxy:
        vv = subprocess.run([bench.haproxy, "-vv"], capture_output=True, text=True).stdout
        mm = re.search(r"Running on OpenSSL version : (.+)", vv)
        info["HAProxy OpenSSL"] = mm.group(1).strip() if mm else "?"
    return info


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="wss through wsproxy and HAProxy (issue #7); see benchmarks/README.md")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 1 s windows, 1,000 idle connections")
    ap.add_argument("--cases", nargs="+", choices=[c.id for c in CASES], metavar="CASE",
                    help=f"subset of: {' '.join(c.id for c in CASES)} (default: all)")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain-ws columns (what TLS adds)")
    ap.add_argument("--no-direct", action="store_true", help="leave out the direct TLS baseline")
    ap.add_argument("--repeat", type=int, help="runs of each case per proxy (default 5, idle at most 3; --quick 1)")
    ap.add_argument("--duration", type=float, help="measurement window, s (default 2; --quick 1)")
    ap.add_argument("--warmup", type=float, help="warm-up before each window, s (default 0.5; --quick 0.3)")
    ap.add_argument("--idle-conns", type=int, help="idle case: connections (default 4000; --quick 1000)")
    ap.add_argument("--verify", action="store_true", help="the load client verifies the certificate too")
    ap.add_argument("--append", metavar="FILE", help="append the section to FILE (replacing an earlier TLS section)")
    ap.add_argument("--json", help="raw results file (default reports/bench/tls-<stamp>.json)")
    ap.add_argument("--render", metavar="RUN.json", help="re-render a saved run (no measuring)")
    ap.add_argument("--notes", help="text for a 'Reading it' paragraph (a file path or the text)")
    ap.add_argument("--src", metavar="DIR", help="run wsproxy from DIR/wsproxy (a copy kept by an earlier run)")
    ap.add_argument("--live-tree", action="store_true", help="run wsproxy from the working tree, not a copy")
    ap.add_argument("--max-other", type=float, default=0.10,
                    help="rerun a window in which other processes used more than this share of a core (0.10)")
    ap.add_argument("--retries", type=int, default=2, help="reruns of a disturbed window (default 2)")
    ap.add_argument("--quiet-timeout", type=float, default=600.0, help="longest wait for a quiet machine, s")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    a = ap.parse_args(argv)
    if a.repeat is None:
        a.repeat = 1 if a.quick else 5
    if a.duration is None:
        a.duration = 1.0 if a.quick else 2.0
    if a.warmup is None:
        a.warmup = 0.3 if a.quick else 0.5
    if a.idle_conns is None:
        a.idle_conns = 1000 if a.quick else 4000
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    notes = None
    if a.notes:
        notes = Path(a.notes).read_text() if os.path.exists(a.notes) else a.notes
    if a.render:
        doc = json.loads(Path(a.render).read_text())
        if notes:
            doc["notes"] = notes
        text = render(doc)
        print(text)
        if a.append:
            write_section(Path(a.append), text)
            log(f"tls.py: wrote the TLS section of {a.append}")
        return 0
    try:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    except (OSError, AttributeError):
        pass
    if os.cpu_count() and os.cpu_count() < 2 and not a.no_pin:
        log("tls.py: fewer than 2 CPUs: pinning disabled")
        a.no_pin = True
    command = "python benchmarks/tls.py" + ("" if argv is None and len(sys.argv) == 1 else
                                           " " + shlex.join(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory(prefix="wsproxy-tls-") as td:
        try:
            bench = TlsBench(a, Path(td))
        except HarnessError as e:
            log(f"tls.py: {e}")
            return 2
        try:
            try:
                import picows  # noqa: F401
            except ImportError:
                log("tls.py: picows is not installed: pip install -e '.[bench]'")
                return 2
            variants = [v for v in VARIANTS if not (a.no_plain and not v.tls) and not (a.no_direct and v.kind == "direct")]
            if not bench.haproxy:
                log("tls.py: HAProxy is not installed: its columns stay empty (make bench-tools)")
            cases = [c for c in CASES if not a.cases or c.id in a.cases]
            t0 = time.time()
            load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
            info = machine(bench)
            bench.wait_quiet("before starting")
            bench.start_member()
            bench.start_tls_member()
            results = run_tls_suite(bench, variants, cases)
            if bench.src is not None and not a.src:
                live = run.tree_digest(ROOT)
                if live != bench.digest:
                    info["code measured"] += f"; the working tree changed during the run (now {live})"
        except HarnessError as e:
            log(f"tls.py: {e}")
            return 2
        finally:
            for p in (bench.member, bench.tls_member):
                if p is not None:
                    p.stop(grace=2.0)
    conns = sum(r.get("tls", {}).get("conns", 0) for cs in results.values() for rs in cs.values() for r in rs)
    resumed = sum(r.get("tls", {}).get("resumed", 0) for cs in results.values() for rs in cs.values() for r in rs)
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "elapsed_s": time.time() - t0,
        "command": command, "machine": info, "cert": bench.certs["info"], "repeat": a.repeat,
        "duration": a.duration, "warmup": a.warmup, "idle_conns": a.idle_conns, "verify": a.verify,
        "load_start": load_start, "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "variants": [v.id for v in variants], "cases": [c.id for c in cases], "results": results,
        "probes": bench.probes, "resumed": [resumed, conns], "notes": notes,
    }
    run.REPORTS.mkdir(parents=True, exist_ok=True)
    json_path = Path(a.json) if a.json else run.REPORTS / time.strftime("tls-%Y%m%d-%H%M%S.json", time.gmtime(t0))
    json_path.write_text(json.dumps(doc, indent=1))
    text = render(doc)
    print(text)
    if a.append:
        write_section(Path(a.append), text)
        log(f"tls.py: wrote the TLS section of {a.append}")
    log(f"tls.py: raw results in {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
