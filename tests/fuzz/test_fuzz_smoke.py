"""A short run of each fuzz harness on the C and the pure build (``make fuzz`` runs longer).

The four libFuzzer runs go at once (fuzz/run.py --jobs 4), about 10 s each, with a scratch
corpus directory, so the seeds in fuzz/corpus are only read. Any crash (an unexpected
exception or a broken invariant) fails its test, which names the artifact to replay. Skipped
where atheris is not installed (Python 3.12 run, non-x86_64 machines).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install -e '.[fuzz]')")

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 10


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("fuzz")
    out = work / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--time", str(SECONDS), "--jobs", "4",
         "--work", str(work), "--json", str(out)],
        cwd=ROOT, timeout=SECONDS + 150, capture_output=True,
    )
    return {(r["harness"], r["build"]): r for r in json.loads(out.read_text())}


@pytest.mark.parametrize("build", ["c", "py"])
@pytest.mark.parametrize("harness", ["http_head", "frames"])
def test_fuzz_smoke(smoke_results, harness, build):
    result = smoke_results[(harness, build)]
    log = Path(result["log"]).read_text(errors="replace")
    assert not result["crash"], f"{harness} ({build} build) crashed: {result.get('artifact')}\n{log[-6000:]}"
    print(f"{harness}/{build}: {result.get('runs')} runs, {result.get('exec_per_s')} exec/s, "
          f"cov {result.get('cov')}, ft {result.get('ft')}")
    assert result.get("runs", 0) > 100, log[-3000:]  # it really ran
