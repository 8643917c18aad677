"""Fixtures for tests/unit."""

from __future__ import annotations

# --- impl: the pure-Python and compiled twins (frames/mask layer) -------------------------------
# Shared vectors run against both (aiohttp's REQUEST_PARSERS pattern). "c" is skipped when the
# extensions are not built or WSPROXY_NO_EXTENSIONS=1 asks for the pure build.
from types import SimpleNamespace

import pytest

from wsproxy import _speedups
from wsproxy.protocol import frames as py_frames
from wsproxy.protocol import mask as py_mask


def _load_c_impl() -> tuple[SimpleNamespace | None, str]:
    if _speedups.NO_EXTENSIONS:
        return None, "WSPROXY_NO_EXTENSIONS=1: pure build only"
    try:
        from wsproxy._ext import frames as c_frames
        from wsproxy._ext import mask as c_mask
    except ImportError as exc:
        return None, f"C extensions not built ({exc}); run: python setup.py build_ext --inplace"
    return SimpleNamespace(name="c", FrameTracker=c_frames.FrameTracker, apply_mask=c_mask.apply_mask), ""


PY_IMPL = SimpleNamespace(name="py", FrameTracker=py_frames.FrameTracker, apply_mask=py_mask.apply_mask)
C_IMPL, C_SKIP_REASON = _load_c_impl()


@pytest.fixture(params=["py", "c"])
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """A namespace with FrameTracker and apply_mask from one implementation."""
    if request.param == "py":
        return PY_IMPL
    if C_IMPL is None:
        pytest.skip(C_SKIP_REASON)
    return C_IMPL


# --- end impl --------------------------------------------------------------------------------------
