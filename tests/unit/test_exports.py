"""The compiled modules and their pure twins expose the same API (names, attributes, stubs)."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsproxy import _speedups
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import http_head as py_http_head
from wsproxy.protocol import mask as py_mask
from wsproxy.protocol import relay_core as py_relay_core

ROOT = Path(__file__).parents[2]
# Which names each compiled module accelerates; the pure module has them all and more.
FRAMES = {"Frame", "FrameReader", "FrameTracker", "Message", "MessageAssembler", "build_close", "build_frame"}
ACCELERATED = {"mask": {"apply_mask"}, "frames": FRAMES, "relay_core": {"RelayCore"},
               "http_head": {"scan_fields", "rewrite_head"}}
PURE = {"mask": py_mask, "frames": py_frames, "relay_core": py_relay_core, "http_head": py_http_head}


@pytest.fixture(params=sorted(ACCELERATED))
def pair(request):
    """(name, compiled module, pure module) for one ext module."""
    if _speedups.NO_EXTENSIONS:
        pytest.skip("WSPROXY_NO_EXTENSIONS=1: pure build only")
    try:
        compiled = __import__(f"wsproxy._ext.{request.param}", fromlist=["_"])
    except ImportError as exc:
        pytest.skip(f"C extensions not built ({exc}); run: python setup.py build_ext --inplace")
    return request.param, compiled, PURE[request.param]


def public(obj) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def test_module_names(pair):
    name, compiled, _ = pair
    # ext/ sits outside the package, so the Extension must carry the full dotted name.
    assert compiled.__name__ == f"wsproxy._ext.{name}"
    for export in compiled.__all__:
        obj = getattr(compiled, export)
        assert obj.__module__ == f"wsproxy._ext.{name}"


def test_exports_match_the_pure_module(pair):
    name, compiled, pure = pair
    assert set(compiled.__all__) == ACCELERATED[name]
    assert set(compiled.__all__) <= set(pure.__all__)
    for export in compiled.__all__:
        assert hasattr(compiled, export)


def test_same_public_members_and_signatures(pair):
    _, compiled, pure = pair
    for export in compiled.__all__:
        c_obj, py_obj = getattr(compiled, export), getattr(pure, export)
        if inspect.isclass(c_obj):
            assert public(c_obj) == public(py_obj)
            for member in public(c_obj):
                c_attr, py_attr = getattr(c_obj, member), getattr(py_obj, member)
                assert callable(c_attr) == callable(py_attr), member
                if callable(c_attr):
                    assert list(inspect.signature(c_attr).parameters) == list(
                        inspect.signature(py_attr).parameters
                    ), member
        else:
            assert list(inspect.signature(c_obj).parameters) == list(inspect.signature(py_obj).parameters)


def test_stub_declares_the_compiled_api(pair):
    name, compiled, _ = pair
    tree = ast.parse((ROOT / "wsproxy" / "_ext" / f"{name}.pyi").read_text())
    declared = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert declared == set(compiled.__all__)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            fields = [n.target.id for n in node.body if isinstance(n, ast.AnnAssign)]
            members = {n.name for n in methods if not n.name.startswith("_")} | set(fields)
            assert members == public(getattr(compiled, node.name))


def test_speedups_selects_the_compiled_build_when_present(pair):
    assert _speedups.IMPLEMENTATION == "c"
    for name in FRAMES:
        assert getattr(_speedups, name).__module__ == "wsproxy._ext.frames", name
    assert _speedups.apply_mask.__module__ == "wsproxy._ext.mask"
    assert _speedups.RelayCore.__module__ == "wsproxy._ext.relay_core"


def test_no_extensions_env_forces_the_pure_build():
    env = {**os.environ, "WSPROXY_NO_EXTENSIONS": "1"}
    code = (
        "from wsproxy import _speedups as s; "
        "print(s.IMPLEMENTATION, s.FrameTracker.__module__, s.apply_mask.__module__, s.RelayCore.__module__, "
        "*{getattr(s, name).__module__ for name in %r})" % sorted(FRAMES)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["py", "wsproxy.protocol.frames", "wsproxy.protocol.mask",
                                  "wsproxy.protocol.relay_core", "wsproxy.protocol.frames"]


def test_speedups_exports_every_accelerated_name():
    for names in ACCELERATED.values():
        assert names <= set(_speedups.__all__)
