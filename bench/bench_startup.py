"""Bring-up: seconds from `grainhouse up` (warm venv, existing data dir) to the ready line,
and idle memory (RSS, USS) of each service, against the floor of starting PostgreSQL and
NATS alone in the same run.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRAINHOUSE = str(Path(sys.executable).parent / "grainhouse")
ROUNDS = 3


def start(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [GRAINHOUSE, "up", "--data-dir", str(data_dir), "--http-port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
            start_new_session=True,
        )
    marks: dict[str, float] = {}
    while True:
        text = log.read_text(errors="replace")
        now = time.perf_counter() - t0
        for line in text.splitlines():
            key = line.split(":")[0] if line.endswith("healthy") else None
            if key and key not in marks:
                marks[key] = now
        if "Grainhouse is ready at" in text:
            return proc, now, marks  # type: ignore[return-value]
        if proc.poll() is not None or now > 120:
            raise SystemExit(f"up failed:\n{text}")
        time.sleep(0.01)


def mem(pid: int) -> dict[str, float]:
    rss = uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] == "Rss:":
            rss = int(parts[1])
        elif parts[0] in ("Private_Clean:", "Private_Dirty:"):
            uss += int(parts[1])
    return {"rss_mb": round(rss / 1024, 1), "uss_mb": round(uss / 1024, 1)}


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="gh-bench-", dir="/tmp"))
    root.chmod(0o711)
    try:
        # First start creates the cluster (initdb): not what "warm" means; not counted.
        proc, first, _ = start(root / "var", root / "first.log")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        totals, floors, memory = [], [], {}
        for i in range(ROUNDS):
            proc, total, marks = start(root / "var", root / f"up{i}.log")
            totals.append(total)
            floors.append(marks.get("nats", total))  # postgres + nats healthy: the floor
            if i == ROUNDS - 1:
                time.sleep(5)  # idle
                status = json.loads(
                    subprocess.run(
                        [GRAINHOUSE, "status", "--data-dir", str(root / "var"), "--json"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
                for name, svc in status["services"].items():
                    if name in ("auth", "grainmgr", "backup", "frontend"):
                        memory[name] = mem(svc["pid"])
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        result = {
            "first_start_with_initdb_seconds": round(first, 2),
            "warm_up_to_ready_seconds_p50": round(statistics.median(totals), 2),
            "warm_up_to_ready_seconds_all": [round(t, 2) for t in totals],
            "baseline_postgres_and_nats_ready_seconds_p50": round(statistics.median(floors), 2),
            "ratio_ready_vs_baseline": round(
                statistics.median(totals) / statistics.median(floors), 2
            ),
            "goal": "warm up-to-ready <= 5 s",
            "idle_memory": memory,
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
