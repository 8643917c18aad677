"""Autobahn|Testsuite conformance: wsproxy must behave like a direct connection.

The slow tests are marked `conformance` (register the marker in pyproject.toml). They need a
CPython 2.7 interpreter (Autobahn|Testsuite is Python-2-only); setup_py27.sh builds the venv
in .conformance/venv27 on first use (~35 s from PyPI, then ~0 s) and the tests skip only when
no 2.7 interpreter exists on the machine at all. The comparison-logic tests need nothing.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = HERE / "run.py"
SETUP = HERE / "setup_py27.sh"


def _load_run():
    spec = importlib.util.spec_from_file_location("conformance_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _setup_py27():
    r = subprocess.run(["bash", str(SETUP)], cwd=str(ROOT), capture_output=True, text=True,
                       timeout=600)
    if r.returncode == 3:
        pytest.skip("no CPython 2.7 interpreter on this machine (Autobahn|Testsuite is "
                    "Python-2-only; set PY27=/path/to/python2.7): " + r.stderr.strip())
    assert r.returncode == 0, f"setup_py27.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"


def _run_harness(args, timeout):
    """run.py in its own session; on any exit (pytest-timeout included) SIGTERM it, so it
    stops the testee, wsproxy and wstest it started."""
    p = subprocess.Popen([sys.executable, str(RUN), "--no-setup", *args], cwd=str(ROOT),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return p.returncode, out


# Every group but the compression ones (12.*, 13.*: about 10 minutes per side, run in full by
# `make conformance`), plus a sample of them, so permessage-deflate through the relay
# (RSV1 on data frames) is checked in every CI run (~12 s).
CI_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
            "12.1.1", "12.1.2", "12.1.3", "12.2.1", "13.1.1", "13.1.2", "13.3.1", "13.7.1"]


@pytest.mark.conformance
@pytest.mark.timeout(900)
@pytest.mark.parametrize("relay", ["track", "raw"])
def test_autobahn_ci_subset_through_wsproxy(relay):
    """The CI subset through a ``relay`` route: the same result as direct for every case."""
    _setup_py27()
    out_dir = str(ROOT / ".conformance" / f"ci-{relay}")
    rc, out = _run_harness(["--parallel", "--relay", relay, "--out", out_dir, "--timeout", "390",
                            "--cases", *CI_CASES], timeout=840)
    assert rc == 0, (
        f"run.py exited {rc} (1 = cases differ through wsproxy or FAILED, 2 = harness/proxy "
        f"error); reports in {out_dir}\n{out}")


@pytest.mark.conformance
@pytest.mark.timeout(300)
def test_harness_sees_a_transparent_and_a_broken_proxy():
    """Self-test of the harness with a stand-in proxy (tcp_forwarder.py), not wsproxy."""
    _setup_py27()
    fwd = f"{{python}} {HERE / 'tcp_forwarder.py'} {{port}} {{testee_port}}"
    cases = ["--cases", "1.1.1", "2.*", "5.1", "7.1.1", "9.1.1",
             "--out", str(ROOT / ".conformance" / "selftest")]
    rc, out = _run_harness([*cases, "--proxy-cmd", fwd], timeout=240)
    assert rc == 0, out
    rc, out = _run_harness([*cases, "--no-canary", "--proxy-cmd", fwd + " --corrupt-rsv"],
                           timeout=240)
    assert rc == 1, out
    assert "DIFFERENT" in out and "1.1.1" in out, out


# ------------------------------------------------------------------ comparison logic only

def _e(behavior="OK", close="OK", rc=1000):
    return {"behavior": behavior, "behaviorClose": close, "remoteCloseCode": rc,
            "duration": 1, "reportfile": None}


def test_compare_same_is_empty():
    run = _load_run()
    d = {"1.1.1": _e(), "6.4.1": _e("NON-STRICT"), "7.13.1": _e("INFORMATIONAL", "INFORMATIONAL")}
    assert run.compare(d, dict(d)) == []
    assert "SAME" in run.summarize(d, d, [], "track")


def test_compare_reports_each_kind_of_difference():
    run = _load_run()
    d = {"1.1.1": _e(), "2.1": _e(), "3.1": _e(), "4.1.1": _e(), "5.1": _e("FAILED", "FAILED")}
    p = {"1.1.1": _e("FAILED", "OK"), "2.1": _e("OK", "FAILED", 1002), "3.1": _e(),
         "5.1": _e("FAILED", "FAILED"), "10.1.1": _e()}
    rows = {r["case"]: r["problems"] for r in run.compare(d, p)}
    assert rows == {
        "1.1.1": ["behavior"],
        "2.1": ["behaviorClose"],
        "4.1.1": ["missing through proxy"],
        "5.1": ["FAILED through proxy", "close FAILED through proxy"],
        "10.1.1": ["missing in direct run"],
    }
    # numeric order of case ids, not string order
    assert [r["case"] for r in run.compare(d, p)] == ["1.1.1", "2.1", "4.1.1", "5.1", "10.1.1"]
    table = run.format_table(run.compare(d, p))
    assert "1.1.1" in table and "FAILED/OK" in table
    assert "DIFFERENT" in run.summarize(d, p, run.compare(d, p), "track")


def test_case_selection_defaults():
    run = _load_run()
    a = run.parse_args([])
    assert (a.cases, a.exclude) == (["*"], ["12.*", "13.*"])
    a = run.parse_args(["--full"])
    assert (a.cases, a.exclude) == (["*"], [])
    a = run.parse_args(["--cases", "1.*,2.*", "9.1.1", "--relay", "raw"])
    assert (a.cases, a.exclude, a.relay) == (["1.*", "2.*", "9.1.1"], [], "raw")
    a = run.parse_args(["--exclude", "9.*", "12.*", "13.*"])
    assert (a.cases, a.exclude) == (["*"], ["9.*", "12.*", "13.*"])


def test_default_timeout_covers_the_compression_groups():
    run = _load_run()
    assert run.parse_args([]).timeout == 600
    assert run.parse_args(["--cases", "1.*", "9.*"]).timeout == 600
    for argv in (["--full"], ["--cases", "12.*", "13.*"], ["--cases", "13.1.1"],
                 ["--exclude", "9.*"]):
        assert run.parse_args(argv).timeout == 3000, argv
    assert run.parse_args(["--timeout", "42"]).timeout == 42
