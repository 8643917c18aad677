"""`wsproxy check` and `wsproxy version`, run as subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .support import REPO, base_env

GOOD = """
[server]
log_level = "info"

[listeners.public]
bind = "127.0.0.1:18080"
mode = "http"
routes = [
  { path_prefix = "/fast/", pool = "chat", relay = "raw" },
  { host = "chat.example.com", pool = "chat" },
  { pool = "web" },
]

[pools.chat]
balance = "least_conn"
members = ["127.0.0.1:19001", "127.0.0.1:19002"]

[pools.web]
members = ["127.0.0.1:18000"]
"""

BAD = """
[server]
log_level = "loud"

[listeners.public]
bind = "127.0.0.1:notaport"
routes = [
  { path_prefix = "/x/", pool = "missing_pool" },
  { pool = "web" },
]

[pools.web]
balanse = "round_robin"
members = ["not an address"]
"""


def wsproxy(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsproxy", *args], capture_output=True, text=True,
                          cwd=str(REPO), env=base_env(env), timeout=timeout)


def test_check_good_config_prints_plan(tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text(GOOD)
    r = wsproxy("check", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "public" in out and "127.0.0.1:18080" in out
    for pool in ("chat", "web"):
        assert pool in out
    for member in ("127.0.0.1:19001", "127.0.0.1:19002", "127.0.0.1:18000"):
        assert member in out
    # each route's relay mode: the /fast/ route is raw, the two others track
    assert re.search(r"raw", out), out
    assert len(re.findall(r"\btrack\b", out)) >= 2, out
    fast_line = next(l for l in out.splitlines() if "/fast/" in l)
    assert "raw" in fast_line, out
    host_line = next(l for l in out.splitlines() if "chat.example.com" in l)
    assert "track" in host_line, out


def test_check_does_not_bind(tmp_path):
    """check validates without binding: a port already in use is fine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        conf = tmp_path / "good.conf"
        conf.write_text(GOOD.replace("18080", str(port)))
        r = wsproxy("check", "-c", str(conf))
        assert r.returncode == 0, r.stderr


def test_check_bad_config_lists_every_error(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(BAD)
    r = wsproxy("check", "-c", str(conf))
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr
    # one message per problem, each naming its key path
    assert "server.log_level" in err, err
    assert "listeners.public.bind" in err, err
    assert "missing_pool" in err, err
    assert "balanse" in err, err
    assert "balance" in err.split("balanse", 1)[1], "no 'did you mean balance' hint"
    assert "pools.web.members[0]" in err, err


def test_check_toml_syntax_error_has_position(tmp_path):
    conf = tmp_path / "syntax.conf"
    conf.write_text("[server]\nlog_level = \n")
    r = wsproxy("check", "-c", str(conf))
    assert r.returncode == 1
    assert re.search(r"line\s*2", r.stderr), r.stderr


def test_version_prints_build_kind():
    r = wsproxy("version")
    assert r.returncode == 0, r.stderr
    assert re.search(r"wsproxy \d+\.\d+\.\d+\S* \((c|py) build\)", r.stdout), r.stdout


def test_version_pure_python_build():
    r = wsproxy("version", env={"WSPROXY_NO_EXTENSIONS": "1"})
    assert r.returncode == 0, r.stderr
    assert "(py build)" in r.stdout, r.stdout


def test_version_c_build_when_compiled():
    import pytest

    if not list((REPO / "wsproxy" / "_ext").glob("*.so")):
        pytest.skip("C accelerators not built")
    if os.environ.get("WSPROXY_NO_EXTENSIONS"):
        pytest.skip("this run forces the pure build (WSPROXY_NO_EXTENSIONS)")
    r = wsproxy("version")
    assert r.returncode == 0, r.stderr
    assert "(c build" in r.stdout, r.stdout
