#!/usr/bin/env python3
"""Autobahn|Testsuite conformance harness for wsproxy: direct vs. through-the-proxy.

Runs `wstest -m fuzzingclient` twice against Autobahn's own testee server (echo backend,
speaks permessage-deflate, strictest peer we have): once directly and once through
`python -m wsproxy -c site.conf` (one http listener, one pool = the testee). Then compares
the two reports case by case: `behavior` (OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED /
FAILED) and `behaviorClose` must be equal through the proxy and direct.

    python tests/conformance/run.py                  # CI subset: all but 12.* and 13.*
    python tests/conformance/run.py --full           # every case (12/13 take ~10 min/side)
    python tests/conformance/run.py --cases 1.* 2.* 9.1.1 --relay raw
    python tests/conformance/run.py --exclude 9.* 12.* 13.*
    python tests/conformance/run.py --direct-only    # validate the backend/harness alone
    python tests/conformance/run.py --compare A/index.json B/index.json   # no run

Exit: 0 same everywhere and nothing FAILED through the proxy; 1 differences or FAILED;
2 harness/infrastructure error (proxy did not start or died, wstest timed out, ...);
3 no Python 2.7 on this machine (setup_py27.sh could not run wstest at all).

Everything goes to .conformance/out/ (gitignored): site.conf, spec-*.json,
reports/{direct,proxy}/index.json (+ per-case JSON/HTML), logs/*.log, summary.json.
The Python 2.7 venv with wstest is made by setup_py27.sh (called here; idempotent).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONF_DIR = Path(os.environ.get("CONFORMANCE_DIR", ROOT / ".conformance"))
VENV27 = CONF_DIR / "venv27"
WSTEST = VENV27 / "bin" / "wstest"
PY27 = VENV27 / "bin" / "python"

CI_EXCLUDE = ["12.*", "13.*"]
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")

EXIT_OK, EXIT_DIFF, EXIT_INFRA, EXIT_NO_PY27 = 0, 1, 2, 3


class HarnessError(Exception):
    """Infrastructure problem (not a conformance difference): exit 2."""


# --------------------------------------------------------------------------- processes

def _pdeathsig():
    """Child side of Popen: die with the harness even if it is SIGKILLed (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Procs:
    """Every process the harness starts: own session each, killed on every exit path."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name, argv, log_path, **kw):
        log = open(log_path, "wb")
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig if sys.platform == "linux" else None,
            **kw,
        )
        log.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, grace=12.0):
        if p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self):
        for _name, p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host, port) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, n=40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + ln for ln in lines[-n:])


def start_testee(procs: Procs, out: Path, label: str, timeout=30.0) -> int:
    log = out / "logs" / f"testee-{label}.log"
    p = procs.start(f"testee-{label}", [str(PY27), "-u", str(HERE / "testee_server.py"),
                                         "--host", "127.0.0.1", "--port", "0"], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise HarnessError(f"testee server ({label}) exited with {p.returncode}:\n{tail(log)}")
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("LISTENING "):
                return int(line.split()[1])
        time.sleep(0.1)
    raise HarnessError(f"testee server ({label}) did not report its port in {timeout}s:\n{tail(log)}")


def write_site_conf(path: Path, proxy_port: int, testee_port: int, relay: str):
    # Keys from shared/design/CONFIG.md (stable contract). The route has no match keys
    # (catch-all); the relay mode is set on the route and on the pool.
    path.write_text(f"""\
# generated by tests/conformance/run.py
[server]
workers = 1
log_level = "info"
access_log = true

[listeners.conformance]
bind = "127.0.0.1:{proxy_port}"
mode = "http"
routes = [
  {{ pool = "testee", relay = "{relay}" }},
]

[pools.testee]
members = ["127.0.0.1:{testee_port}"]
relay = "{relay}"
""")


def start_proxy(procs: Procs, out: Path, conf: Path, port: int, testee_port: int,
                proxy_cmd: str | None = None, timeout=30.0):
    log = out / "logs" / "wsproxy.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if proxy_cmd:  # harness self-test with a stand-in proxy
        argv = shlex.split(proxy_cmd.format(conf=conf, port=port, testee_port=testee_port,
                                            python=sys.executable))
    else:
        argv = [sys.executable, "-m", "wsproxy", "-c", str(conf), "--log-format", "json"]
    p = procs.start("wsproxy", argv, log, cwd=str(ROOT), env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise HarnessError(
                f"wsproxy exited with {p.returncode} before listening on 127.0.0.1:{port}\n"
                f"    command: {' '.join(argv)}\n{tail(log)}")
        if port_open("127.0.0.1", port):
            return p
        time.sleep(0.1)
    raise HarnessError(f"wsproxy did not listen on 127.0.0.1:{port} within {timeout}s:\n{tail(log)}")


def write_spec(path: Path, agent: str, url: str, outdir: Path, cases, exclude):
    spec = {
        "options": {"failByDrop": False},
        "outdir": str(outdir),
        "servers": [{"agent": agent, "url": url}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2))


def start_fuzzer(procs: Procs, out: Path, label: str, spec: Path):
    log = out / "logs" / f"wstest-{label}.log"
    p = procs.start(f"wstest-{label}", [str(WSTEST), "-m", "fuzzingclient", "-s", str(spec)], log,
                    cwd=str(out))
    return p, log


def wait_fuzzers(procs: Procs, runs, timeout: float, watch=None):
    """runs: list of (label, Popen, log). watch: (name, Popen) that must stay alive."""
    deadline = time.monotonic() + timeout
    pending = list(runs)
    while pending:
        for r in list(pending):
            label, p, log = r
            if p.poll() is not None:
                if p.returncode != 0:
                    raise HarnessError(f"wstest ({label}) exited with {p.returncode}:\n{tail(log)}")
                pending.remove(r)
        if watch is not None and watch[1].poll() is not None:
            raise HarnessError(f"{watch[0]} died during the run (exit {watch[1].returncode}); "
                               f"see its log in {CONF_DIR / 'out' / 'logs'}")
        if pending and time.monotonic() > deadline:
            names = ", ".join(r[0] for r in pending)
            raise HarnessError(f"wstest ({names}) did not finish within {timeout:.0f}s:\n"
                               + "\n".join(tail(r[2], 5) for r in pending))
        time.sleep(0.2)


# --------------------------------------------------------------------------- reports

def load_index(path: Path) -> tuple[str, dict]:
    """Return (agent, {case_id: entry}) from a wstest index.json (one agent)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot read wstest report {path}: {e}") from None
    if len(data) != 1:
        raise HarnessError(f"{path}: expected one agent, found {sorted(data)}")
    agent, cases = next(iter(data.items()))
    return agent, cases


def case_key(case_id: str):
    return tuple(int(x) if x.isdigit() else x for x in case_id.split("."))


def case_details(report_dir: Path, entry: dict | None) -> dict:
    if not entry or not entry.get("reportfile"):
        return {}
    try:
        return json.loads((report_dir / entry["reportfile"]).read_text())
    except (OSError, ValueError):
        return {}


def compare(direct: dict, proxy: dict) -> list[dict]:
    """Per-case rows for every case that differs or FAILED through the proxy."""
    rows = []
    for cid in sorted(set(direct) | set(proxy), key=case_key):
        d, p = direct.get(cid), proxy.get(cid)
        problems = []
        if d is None:
            problems.append("missing in direct run")
        if p is None:
            problems.append("missing through proxy")
        if d is not None and p is not None:
            if d.get("behavior") != p.get("behavior"):
                problems.append("behavior")
            if d.get("behaviorClose") != p.get("behaviorClose"):
                problems.append("behaviorClose")
        if p is not None and p.get("behavior") == "FAILED" and "behavior" not in problems:
            problems.append("FAILED through proxy")
        if p is not None and p.get("behaviorClose") == "FAILED" and "behaviorClose" not in problems:
            problems.append("close FAILED through proxy")
        if problems:
            rows.append({"case": cid, "direct": d, "proxy": p, "problems": problems})
    return rows


def _fmt(entry):
    if entry is None:
        return "-"
    return f"{entry.get('behavior')}/{entry.get('behaviorClose')} rc={entry.get('remoteCloseCode')}"


def format_table(rows, direct_dir: Path | None = None, proxy_dir: Path | None = None,
                 details: int = 10**9) -> str:
    """The difference table, then `details` per-case detail blocks from the case reports."""
    if not rows:
        return ""
    w_case = max(6, max(len(r["case"]) for r in rows))
    w_d = max(len("direct"), max(len(_fmt(r["direct"])) for r in rows))
    w_p = max(len("proxy"), max(len(_fmt(r["proxy"])) for r in rows))
    lines = [f"{'case':<{w_case}}  {'direct (behavior/close)':<{w_d}}  "
             f"{'through proxy':<{w_p}}  what",
             "-" * (w_case + w_d + w_p + 30)]
    for r in rows:
        lines.append(f"{r['case']:<{w_case}}  {_fmt(r['direct']):<{w_d}}  {_fmt(r['proxy']):<{w_p}}  "
                     + ", ".join(r["problems"]))
    if details and proxy_dir is not None:
        lines.append("")
        for r in rows[:details]:
            dd = case_details(direct_dir, r["direct"]) if direct_dir else {}
            pd = case_details(proxy_dir, r["proxy"])
            src = pd or dd
            lines.append(f"== case {r['case']}: {_oneline(src.get('description', ''))}")
            if src.get("expectation"):
                lines.append(f"   expectation: {_oneline(src['expectation'])}")
            for label, det in (("direct", dd), ("proxy ", pd)):
                if not det:
                    continue
                lines.append(
                    f"   {label}: {det.get('behavior')} / close {det.get('behaviorClose')}; "
                    f"localCloseCode={det.get('localCloseCode')} remoteCloseCode={det.get('remoteCloseCode')} "
                    f"wasClean={det.get('wasClean')} droppedByMe={det.get('droppedByMe')} "
                    f"wasNotCleanReason={det.get('wasNotCleanReason')!r}")
                lines.append(f"           result: {_oneline(det.get('result', ''))[:300]}")
                lines.append(f"           resultClose: {_oneline(det.get('resultClose', ''))[:300]}")
        if len(rows) > details:
            lines.append(f"... details of {len(rows) - details} more cases in diff.txt")
    return "\n".join(lines)


def _oneline(s) -> str:
    return " ".join(str(s).split())


def proxy_log_note(log: Path) -> str:
    """Errors and tracebacks in the proxy's log are worth a look even when cases agree."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    errors = [ln for ln in lines if '"level":"error"' in ln.replace(" ", "")
              or '"level":"critical"' in ln.replace(" ", "")]
    tracebacks = text.count("Traceback (most recent call last)")
    if not errors and not tracebacks:
        return ""
    first = (errors or [ln for ln in lines if "Traceback" in ln])[0]
    return (f"conformance: note: wsproxy logged {len(errors)} error lines and {tracebacks} "
            f"tracebacks ({log}); first: {first[:300]}")


def counts(cases: dict) -> dict:
    c = {}
    for e in cases.values():
        c[e.get("behavior")] = c.get(e.get("behavior"), 0) + 1
    return c


def summarize(direct: dict | None, proxy: dict | None, rows, relay: str) -> str:
    def cs(cases):
        if cases is None:
            return "not run"
        c = counts(cases)
        return " ".join(f"{k}={c[k]}" for k in BEHAVIORS if k in c) or "no cases"
    n = len(set(direct or {}) | set(proxy or {}))
    failed = sum(1 for e in (proxy or {}).values()
                 if "FAILED" in (e.get("behavior"), e.get("behaviorClose")))
    verdict = "SAME" if not rows else "DIFFERENT"
    return (f"autobahn conformance (relay={relay}): {verdict}: {n} cases, {len(rows)} differing, "
            f"{failed} FAILED through proxy | direct: {cs(direct)} | proxy: {cs(proxy)}")


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Autobahn|Testsuite: wsproxy vs direct",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--cases", nargs="+", metavar="ID",
                    help="case ids or patterns (1.*, 9.1.1, 6.4.*); default: *")
    ap.add_argument("--exclude", nargs="+", metavar="ID",
                    help="case patterns to exclude; default: 12.* 13.* unless --cases/--full")
    ap.add_argument("--full", action="store_true", help="run every case (12.*, 13.* included)")
    ap.add_argument("--relay", choices=("track", "raw"), default="track",
                    help="relay mode of the proxied route (default track)")
    ap.add_argument("--direct-only", action="store_true",
                    help="only the direct run (validates the backend and the harness)")
    ap.add_argument("--parallel", action="store_true",
                    help="run the direct and proxied fuzzers at the same time (2 testees)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds for each fuzzer run (default 600; 3000 when 12.*/13.* are selected)")
    ap.add_argument("--proxy-cmd", metavar="TEMPLATE",
                    help="harness self-test: run this instead of wsproxy ({conf} {port} "
                         "{testee_port} {python} are substituted)")
    ap.add_argument("--no-canary", action="store_true",
                    help="run the whole set even if case 1.1.1 fails through the proxy")
    ap.add_argument("--no-setup", action="store_true", help="do not call setup_py27.sh")
    ap.add_argument("--out", type=Path, default=CONF_DIR / "out", help="output dir (wiped)")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("DIRECT_INDEX", "PROXY_INDEX"),
                    help="only compare two existing index.json files")
    args = ap.parse_args(argv)
    split = lambda xs: [y for x in xs for y in x.split(",") if y]  # noqa: E731
    if args.full:
        args.cases, args.exclude = split(args.cases or ["*"]), split(args.exclude or [])
    elif args.cases:
        args.cases, args.exclude = split(args.cases), split(args.exclude or [])
    else:
        args.cases, args.exclude = ["*"], split(args.exclude or CI_EXCLUDE)
    if args.timeout is None:
        # groups 12/13 (compression) take ~13-19 min per side; everything else ~20 s
        slow = any(c == "*" or c.split(".")[0] in ("12", "13") for c in args.cases) and not (
            {"12.*", "13.*"} <= set(args.exclude))
        args.timeout = 3000.0 if slow else 600.0
    return args


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


def run(args) -> int:
    if args.compare:
        _, d = load_index(args.compare[0])
        _, p = load_index(args.compare[1])
        rows = compare(d, p)
        if rows:
            print(format_table(rows, args.compare[0].parent, args.compare[1].parent))
        print(summarize(d, p, rows, "?"))
        return EXIT_DIFF if rows else EXIT_OK

    if not args.no_setup:
        r = subprocess.run(["bash", str(HERE / "setup_py27.sh")], cwd=str(ROOT))
        if r.returncode == 3:
            print("conformance: no Python 2.7 interpreter on this machine", file=sys.stderr)
            return EXIT_NO_PY27
        if r.returncode != 0:
            raise HarnessError(f"setup_py27.sh failed with {r.returncode}")
    if not WSTEST.exists():
        raise HarnessError(f"{WSTEST} missing: run tests/conformance/setup_py27.sh")

    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    reports = {"direct": out / "reports" / "direct", "proxy": out / "reports" / "proxy"}
    print(f"conformance: cases={args.cases} exclude={args.exclude} relay={args.relay} out={out}",
          flush=True)

    procs = Procs()
    timings = {}
    try:
        testee_direct = start_testee(procs, out, "direct")
        testee_proxy = testee_direct
        if args.parallel and not args.direct_only:
            testee_proxy = start_testee(procs, out, "proxy")
        print(f"conformance: testee server on 127.0.0.1:{testee_direct}"
              + (f" and :{testee_proxy}" if testee_proxy != testee_direct else ""), flush=True)

        specs = {}
        write_spec(out / "spec-direct.json", "direct", f"ws://127.0.0.1:{testee_direct}",
                   reports["direct"], args.cases, args.exclude)
        specs["direct"] = out / "spec-direct.json"
        proxy_proc = None
        if not args.direct_only:
            proxy_port = free_port()
            conf = out / "site.conf"
            write_site_conf(conf, proxy_port, testee_proxy, args.relay)
            write_spec(out / "spec-proxy.json", f"wsproxy-{args.relay}",
                       f"ws://127.0.0.1:{proxy_port}", reports["proxy"], args.cases, args.exclude)
            specs["proxy"] = out / "spec-proxy.json"
            # start it before any fuzzing: a proxy that does not come up fails fast
            proxy_proc = start_proxy(procs, out, conf, proxy_port, testee_proxy, args.proxy_cmd)
            print(f"conformance: wsproxy listening on 127.0.0.1:{proxy_port}", flush=True)

        if not args.direct_only and not args.no_canary:
            # Canary: one echo case through the proxy (~1 s). A proxy that cannot pass it
            # (e.g. breaks the handshake) would make every case wait for wstest's own
            # timeouts (~5 s each): report that at once instead of running the whole set.
            write_spec(out / "spec-canary.json", f"wsproxy-{args.relay}",
                       f"ws://127.0.0.1:{proxy_port}", out / "reports" / "canary", ["1.1.1"], [])
            runs = [("canary", *start_fuzzer(procs, out, "canary", out / "spec-canary.json"))]
            wait_fuzzers(procs, runs, 60, watch=("wsproxy", proxy_proc))
            _, canary = load_index(out / "reports" / "canary" / "index.json")
            bad = {c: e for c, e in canary.items() if (e["behavior"], e["behaviorClose"]) != ("OK", "OK")}
            if bad:
                rows = [{"case": c, "direct": None, "proxy": e, "problems": ["canary failed"]}
                        for c, e in bad.items()]
                print(format_table(rows, None, out / "reports" / "canary"))
                print(f"autobahn conformance (relay={args.relay}): DIFFERENT: canary case 1.1.1 "
                      f"(plain echo) fails through the proxy; full run skipped (--no-canary runs it)")
                return EXIT_DIFF
            print("conformance: canary 1.1.1 OK through the proxy", flush=True)

        order = ["direct"] if args.direct_only else ["direct", "proxy"]
        if args.parallel:
            groups = [order]
        else:
            groups = [[x] for x in order]
        for group in groups:
            t0 = time.monotonic()
            runs = [(lab, *start_fuzzer(procs, out, lab, specs[lab])) for lab in group]
            print(f"conformance: fuzzing {' + '.join(group)} ...", flush=True)
            wait_fuzzers(procs, runs, args.timeout,
                         watch=("wsproxy", proxy_proc) if proxy_proc else None)
            dt = time.monotonic() - t0
            for lab in group:
                timings[lab] = round(dt, 1)
            print(f"conformance: {' + '.join(group)} done in {dt:.1f}s", flush=True)
    finally:
        procs.stop_all()

    _, direct = load_index(reports["direct"] / "index.json")
    proxy = None
    if not args.direct_only:
        _, proxy = load_index(reports["proxy"] / "index.json")
        rows = compare(direct, proxy)
    else:
        rows = [{"case": c, "direct": e, "proxy": None, "problems": ["direct FAILED"]}
                for c, e in sorted(direct.items(), key=lambda kv: case_key(kv[0]))
                if e.get("behavior") == "FAILED" or e.get("behaviorClose") == "FAILED"]

    pdir = reports["proxy"] if proxy is not None else None
    (out / "diff.txt").write_text(format_table(rows, reports["direct"], pdir) + "\n")
    table = format_table(rows, reports["direct"], pdir, details=15)
    summary = summarize(direct, proxy, rows, args.relay)
    (out / "summary.json").write_text(json.dumps({
        "relay": args.relay, "cases": args.cases, "exclude": args.exclude,
        "timings_s": timings, "summary": summary,
        "differences": [{"case": r["case"], "problems": r["problems"],
                         "direct": r["direct"], "proxy": r["proxy"]} for r in rows],
    }, indent=2))
    if table:
        print(table)
    note = proxy_log_note(out / "logs" / "wsproxy.log")
    if note:
        print(note)
    print(f"conformance: timings {timings}; reports in {out / 'reports'}")
    print(summary)
    return EXIT_DIFF if rows else EXIT_OK


def main(argv=None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    try:
        return run(args)
    except HarnessError as e:
        print(f"conformance: HARNESS ERROR: {e}", file=sys.stderr)
        return EXIT_INFRA
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
