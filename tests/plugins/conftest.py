"""Fixtures for tests/plugins: the example plugins of plugins/, run through the real runtime.

Each test module names its example in ``PLUGIN``; the ``example`` fixture is parametrized
over the two languages and loads ``plugins/<PLUGIN>.lua`` or ``plugins/<PLUGIN>.py`` with
``wsproxy.scripting.load_plugins`` (the loader the proxy uses), builds a ``PluginChain`` and
dispatches events without sockets, as the proxy will: ``await chain.http_request(session,
Request(...))``, ``chain.ws_frame(...)``... The clock of the chain and of ``shared`` is a
``Clock`` the test moves by hand.

These are the runtime-level tests (``test_<name>_runtime_*``); socket-level tests through
a running proxy come later.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import tomllib
from pathlib import Path

import pytest

from wsproxy.scripting import PluginChain, PluginSpec, SharedStore, load_plugins
from wsproxy.scripting.events import OPCODES
from wsproxy.scripting.objects import LbInfo, Request, Response

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
LANGS = ("lua", "py")
CLIENT_ADDR = "192.0.2.10:50000"


class Clock:
    """A monotonic clock the test moves: ``clock.now += 0.5``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Example:
    """One example plugin loaded in one language, with helpers to dispatch its events."""

    def __init__(self, path: Path, options=None, *, shared: SharedStore | None = None, clock: Clock | None = None):
        self.path = path
        self.clock = clock or Clock()
        self.shared = shared if shared is not None else SharedStore(clock=self.clock)
        self.plugins = load_plugins([PluginSpec(str(path), options=options or {})], shared=self.shared)
        self.plugin = self.plugins[0]
        self.chain = PluginChain(self.plugins, clock=self.clock)
        self._ids = itertools.count(1)

    def session(self, client_addr: str | None = CLIENT_ADDR):
        """A new client connection (ids 1, 2, ...)."""
        return self.chain.session(next(self._ids), client_addr)

    def request(self, session, target: str = "/", headers=(), *, method: str = "GET",
                host: str | None = "app.example.com"):
        """HTTP_REQUEST; returns (outcome, request) so header edits can be checked."""
        req = Request(method, target, ([("Host", host)] if host is not None else []) + list(headers))
        return asyncio.run(self.chain.http_request(session, req)), req

    def response(self, session, status: int = 200, headers=()):
        """HTTP_RESPONSE; returns (outcome, response)."""
        res = Response(status, list(headers))
        return asyncio.run(self.chain.http_response(session, res)), res

    def lb_selected(self, session, pool: str, member: str, attempt: int = 1, tried=()):
        return self.chain.lb_selected(session, LbInfo(pool, member, attempt, tried=tried))

    def lb_failed(self, session, pool: str, reason: str, attempt: int = 1, member: str | None = None,
                  tried=(), status: int | None = None):
        return self.chain.lb_failed(session, LbInfo(pool, member, attempt, reason, tried, status))

    def frame(self, session, opcode: str = "text", payload: bytes | None = b"", *, length: int | None = None,
              fin: bool = True, dir: str = "client", ts: float | None = None):
        """WS_FRAME. ``length`` is the header's payload length (default len(payload));
        ``ts`` None lets the chain read its clock."""
        if length is None:
            length = len(payload or b"")
        return self.chain.ws_frame(session, dir, OPCODES[opcode], fin, length, payload, ts)

    def message(self, session, payload: bytes, opcode: str = "text", *, dir: str = "client",
                ts: float | None = None):
        """WS_MESSAGE (a reassembled data message)."""
        return self.chain.ws_message(session, dir, OPCODES[opcode], payload, ts)


@pytest.fixture(params=LANGS)
def lang(request) -> str:
    return request.param


@pytest.fixture
def load_example():
    """``load_example(name, lang, options=None, shared=None, clock=None)``: any example, any language."""

    def load(name: str, lang: str, options=None, *, shared: SharedStore | None = None,
             clock: Clock | None = None) -> Example:
        return Example(PLUGINS / f"{name}.{lang}", options, shared=shared, clock=clock)

    return load


@pytest.fixture
def example(request, lang):
    """``example(options=None, shared=None, clock=None)`` -> an Example of the module's PLUGIN."""
    name = request.module.PLUGIN

    def load(options=None, *, shared: SharedStore | None = None, clock: Clock | None = None) -> Example:
        return Example(PLUGINS / f"{name}.{lang}", options, shared=shared, clock=clock)

    return load


# -- the documentation block at the top of each example ---------------------------------------

def header(path: Path) -> str:
    """The comment block a plugin file starts with (Lua ``--`` lines, the Python docstring)."""
    text = path.read_text()
    if path.suffix == ".py":
        return ast.get_docstring(ast.parse(text), clean=True) or ""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[3:] if line.startswith("-- ") else line[2:])
    return "\n".join(lines).strip()


def config_snippet(path: Path) -> dict:
    """The ``[[plugins]]`` table shown in the header, parsed as TOML."""
    lines = header(path).splitlines()
    start = lines.index("[[plugins]]")
    snippet = []
    for line in lines[start:]:
        if not line.strip():
            break
        snippet.append(line)
    (table,) = tomllib.loads("\n".join(snippet))["plugins"]
    return table


def _check_docs(name: str, lang: str) -> None:
    path = PLUGINS / f"{name}.{lang}"
    text = header(path)
    assert text.startswith(f"{name}: "), "the header starts with the plugin's name and what it does"
    assert "\nEvents:" in text and "\nOptions:" in text
    table = config_snippet(path)
    assert table["path"] == f"plugins/{name}.{lang}"
    plugins = load_plugins([{**table, "path": str(REPO / table["path"])}])
    assert [p.name for p in plugins] == [name]
    other = "py" if lang == "lua" else "lua"
    assert text.replace(f"{name}.{lang}", f"{name}.{other}") == header(PLUGINS / f"{name}.{other}")


@pytest.fixture
def check_docs(request, lang):
    """``check_docs()``: the module's PLUGIN header names its events and options, its
    [[plugins]] snippet points at the file and loads with its options, and the Lua and
    Python headers say the same thing."""
    return lambda: _check_docs(request.module.PLUGIN, lang)
