"""Fixtures for the black-box integration tests: members and the proxy as subprocesses."""

from __future__ import annotations

import pytest

from .support import Member, Proxy, start_member, start_proxy


@pytest.fixture
def members(tmp_path):
    """Factory: members.ws("a"), members.http("b"), members.blackhole(); all killed at teardown."""
    started: list[Member] = []

    class Factory:
        def ws(self, name: str = "ws", record: bool = True) -> Member:
            m = start_member("ws_echo.py", name, tmp_path, record=record)
            started.append(m)
            return m

        def http(self, name: str = "http") -> Member:
            m = start_member("http_app.py", name, tmp_path)
            started.append(m)
            return m

        def blackhole(self, name: str = "blackhole") -> Member:
            m = start_member("blackhole.py", name, tmp_path)
            started.append(m)
            return m

    try:
        yield Factory()
    finally:
        for m in started:
            m.kill()


@pytest.fixture
def proxy(tmp_path):
    """Factory: proxy(conf_text, env=None) starts ``python -m wsproxy -c site.conf --log-format json``.

    ``$PORT``/``$PORT2`` in conf_text become free ports. Every proxy started is stopped
    (SIGTERM, then SIGKILL after 10 s) at teardown; its stderr is shown on failure.
    """
    started: list[Proxy] = []

    def factory(conf_text: str, env: dict | None = None, **kw) -> Proxy:
        p = start_proxy(conf_text, tmp_path, env=env, **kw)
        started.append(p)
        return p

    try:
        yield factory
    finally:
        for p in started:
            p.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        tmp = item.funcargs.get("tmp_path")
        if tmp is not None:
            for path in sorted(tmp.glob("proxy-*.stderr")):
                text = path.read_text(errors="replace")
                if text:
                    report.sections.append((f"proxy stderr {path.name}", text[-8000:]))
