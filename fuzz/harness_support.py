"""What the fuzz harnesses share: input splitting and the atheris entry point.

A harness module defines ``load()`` (imports the wsproxy modules it checks into its globals)
and ``check(data)`` (runs one input; raises on a bug, returns on an expected rejection). The
imports happen in ``load()``, not at module level, so that ``run_atheris`` can import them
under ``atheris.instrument_imports``: coverage feedback then comes from wsproxy's Python
code. The C accelerators (wsproxy._ext) are not instrumented (atheris would need them built
with clang and -fsanitize=fuzzer); the differential checks against the pure twins cover them.

Replaying an input needs no atheris: ``load(); check(data)`` (tests/fuzz does that for the
seed corpora and the saved regressions).
"""

from __future__ import annotations

import random
import sys


def split_points(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut into chunks, deterministically from ``seed`` (one fuzzed byte):
    0 whole, 1 one byte at a time, otherwise up to 8 random cuts."""
    if seed == 0 or not data:
        return [data]
    if seed == 1:
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed * 7919 + len(data))
    cuts = sorted({rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 9))})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run_atheris(load, check, argv: list[str] | None = None) -> None:
    """The libFuzzer loop over ``check``; argv as libFuzzer takes it (``-max_total_time=``,
    corpus directories...)."""
    import atheris

    with atheris.instrument_imports(include=["wsproxy"]):
        load()
    atheris.Setup(list(argv if argv is not None else sys.argv), check)
    atheris.Fuzz()
