"""Run the fuzz harnesses for a bounded time on the C and the pure build (``make fuzz``).

    python fuzz/run.py [--time 300] [--harness http_head frames] [--build c py] [--jobs 1]
                       [--work .fuzz] [--json results.json]

Each (harness, build) pair is one libFuzzer run (``-max_total_time``) in a subprocess; the
pure build is ``WSPROXY_NO_EXTENSIONS=1``. New inputs go to ``<work>/corpus/<harness>/`` (the
seeds in ``fuzz/corpus/<harness>/`` are read, never written), crashes to
``<work>/artifacts/``. The summary gives runs, exec/s, ``cov`` (edges of wsproxy's Python
code reached) and ``ft`` (features: edges with hit counts) from libFuzzer's last status line.
Exit status 1 if any run found a crash: replay one with
``python fuzz/fuzz_<harness>.py <artifact>``, then minimize it with ``-minimize_crash=1
-runs=100000`` and save it under fuzz/regressions/<harness>/ (tests/unit replays those).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
HARNESSES = ("http_head", "frames")
BUILDS = ("c", "py")
DICTIONARIES = {"http_head": FUZZ / "http.dict"}
_STATUS = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def command(harness: str, seconds: int, work: Path, build: str) -> list[str]:
    corpus = work / "corpus" / harness
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = work / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, str(FUZZ / f"fuzz_{harness}.py"),
        f"-max_total_time={seconds}", "-timeout=10", "-max_len=4096", "-rss_limit_mb=2048",
        f"-artifact_prefix={artifacts}/{harness}-{build}-",
    ]
    if harness in DICTIONARIES:
        args.append(f"-dict={DICTIONARIES[harness]}")
    return args + [str(corpus), str(FUZZ / "corpus" / harness)]


def run_one(harness: str, build: str, seconds: int, work: Path) -> dict:
    env = dict(os.environ)
    env.pop("WSPROXY_NO_EXTENSIONS", None)
    if build == "py":
        env["WSPROXY_NO_EXTENSIONS"] = "1"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{harness}-{build}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(command(harness, seconds, work, build), cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=seconds + 120)
    output = log_path.read_text(errors="replace")
    result = {"harness": harness, "build": build, "seconds": round(time.monotonic() - started, 1),
              "returncode": proc.returncode, "log": str(log_path),
              "crash": proc.returncode != 0 or "ERROR: libFuzzer" in output}
    statuses = _STATUS.findall(output)
    if statuses:
        runs, cov, ft, corpus, _ = statuses[-1]
        result.update(runs=int(runs), cov=int(cov), ft=int(ft), corpus=int(corpus))
    done = _DONE.search(output)
    if done:
        result["runs"] = int(done.group(1))
        result["exec_per_s"] = round(int(done.group(1)) / max(int(done.group(2)), 1))
    artifact = re.search(r"Test unit written to (\S+)", output)
    if artifact:
        result["artifact"] = artifact.group(1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=int, default=300, help="seconds per harness per build")
    parser.add_argument("--harness", nargs="+", choices=HARNESSES, default=list(HARNESSES))
    parser.add_argument("--build", nargs="+", choices=BUILDS, default=list(BUILDS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--work", type=Path, default=ROOT / ".fuzz", help="corpus, crashes and logs")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    pairs = [(h, b) for h in args.harness for b in args.build]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        results = list(pool.map(lambda pair: run_one(*pair, args.time, args.work), pairs))
    print(f"{'harness':10} {'build':5} {'runs':>9} {'exec/s':>7} {'cov':>5} {'ft':>6} {'corpus':>6}  result")
    for r in results:
        verdict = f"CRASH {r.get('artifact', r['log'])}" if r["crash"] else "ok"
        print(f"{r['harness']:10} {r['build']:5} {r.get('runs', 0):>9} {r.get('exec_per_s', 0):>7} "
              f"{r.get('cov', 0):>5} {r.get('ft', 0):>6} {r.get('corpus', 0):>6}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["crash"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
