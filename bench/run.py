"""`make bench`: run every bench/bench_*.py and gather their JSON into one results file.

Owns: bench/results/latest.json (git-ignored).
Trusts: each bench script to print one JSON object on stdout (and to measure its own
baseline in the same run, reporting ratios against it).
Never: asserts a timing; benchmarks report, tests assert.

Each script runs in its own process so one benchmark's state (a launcher, a stack) never
skews another. `--only NAME` runs one (NAME as in bench_NAME.py); `--quick` asks each script
for its short path (BENCH_QUICK=1 in its environment; scripts without one ignore it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="short runs (BENCH_QUICK=1)")
    args = parser.parse_args()
    results: dict[str, object] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "benchmarks": {},
    }
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        env = {**os.environ, **({"BENCH_QUICK": "1"} if args.quick else {})}
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False, env=env
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-2000:]}
        if proc.returncode != 0:
            failed += 1
            data.setdefault("error", f"exit {proc.returncode}")
        results["benchmarks"][name] = data  # type: ignore[index]
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"results written to {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
