"""Replay the fuzz harnesses' saved inputs: every crash the fuzzers found (fuzz/regressions/)
and the seed corpora (fuzz/corpus/). Needs no atheris: ``load(); check(data)`` is the
harness's whole check, so each file here must pass every invariant the fuzzer asserts.

Runs on whatever build ``wsproxy._speedups`` picked (the pure run sets
WSPROXY_NO_EXTENSIONS=1); the frame harness compares the two twins whenever both import.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = ("http_head", "frames")


def harness(name: str):
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    module = importlib.import_module(f"fuzz_{name}")
    module.load()
    return module


def saved_inputs(folder: str) -> list:
    return [
        pytest.param(name, path, id=f"{name}/{path.name}")
        for name in HARNESSES
        for path in sorted((FUZZ / folder / name).glob("*"))
        if path.is_file()
    ]


@pytest.mark.parametrize(("name", "path"), saved_inputs("regressions"))
def test_regression_input(name, path):
    harness(name).check(path.read_bytes())


def test_seed_corpora():
    for name in HARNESSES:
        check = harness(name).check
        seeds = sorted((FUZZ / "corpus" / name).glob("*"))
        assert seeds, f"no seeds in fuzz/corpus/{name}"
        for path in seeds:
            check(path.read_bytes())


# The two member-response findings, spelled out (fuzz_http_head found both in its first minute:
# the proxy accepted the head, then could not write it on and failed inside data_received).


def test_response_reason_phrase_with_control_character_is_502():
    from wsproxy.errors import HttpError
    from wsproxy.protocol.http1 import ResponseParser

    with pytest.raises(HttpError) as info:
        ResponseParser().feed(b"HTTP/1.1 200 a\x00b\r\nContent-Length: 0\r\n\r\n")
    assert info.value.status == 502 and "reason phrase" in info.value.reason
    # HTAB and obs-text are allowed (RFC 9112 section 4).
    head = ResponseParser().feed(b"HTTP/1.1 200 a\tb \xe9\r\nContent-Length: 0\r\n\r\n")[0]
    assert head.reason == "a\tb \xe9"


def test_response_status_below_100_is_502():
    from wsproxy.errors import HttpError
    from wsproxy.protocol.http1 import ResponseParser

    with pytest.raises(HttpError) as info:
        ResponseParser().feed(b"HTTP/1.1 004 No Content\r\n\r\n")
    assert info.value.status == 502 and "004" in info.value.reason
