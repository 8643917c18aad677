"""Import boundaries (ARCHITECTURE.md): the sans-I/O core never imports the I/O shell.

Read with ast, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wsproxy"

# package -> module prefixes it must never import
FORBIDDEN = {
    "protocol": ("asyncio", "socket", "uvloop", "wsproxy.proxy", "wsproxy.app", "wsproxy.cli",
                 "wsproxy.config", "wsproxy.balancing", "wsproxy.routing"),
    "config": ("asyncio", "socket", "uvloop", "wsproxy.proxy", "wsproxy.app", "wsproxy.cli"),
    "routing": ("asyncio", "socket", "uvloop", "wsproxy.proxy", "wsproxy.app", "wsproxy.cli"),
    "balancing": ("asyncio", "socket", "uvloop", "wsproxy.proxy", "wsproxy.app", "wsproxy.cli"),
    "proxy": ("wsproxy.app", "wsproxy.cli", "wsproxy.demo"),
}
# modules outside those packages with the same duty
FORBIDDEN_FILES = {
    "errors.py": ("wsproxy.",),
    "_speedups.py": ("asyncio", "socket", "wsproxy.proxy", "wsproxy.config"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def cases():
    for package, banned in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).glob("*.py")):
            yield pytest.param(path, banned, id=f"{package}/{path.name}")
    for name, banned in FORBIDDEN_FILES.items():
        yield pytest.param(PACKAGE / name, banned, id=name)


@pytest.mark.parametrize("path, banned", list(cases()))
def test_layer_boundaries(path: Path, banned: tuple[str, ...]):
    bad = sorted(name for name in imports_of(path) if any(name == b or name.startswith(b.rstrip(".") + ".") or (b.endswith(".") and name.startswith(b)) for b in banned))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_the_check_can_fail(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import asyncio\n    from wsproxy.proxy import session\n")
    assert {"asyncio", "wsproxy.proxy"} <= imports_of(bad)
