"""Grains bench, part 3: N grains of a tiny app at once, and the platform's memory per grain.

Owns: the many-grains figures (`many_grains`' JSON keys, the goal MEMORY_GOAL_MB); reading a
process's USS and the machine's MemAvailable from /proc.
Trusts: tests.support.procs.grain_processes (which bridge and launcher belong to grainmgr); the
repo root on sys.path (bench_grains.py puts it there); grains_cold for first_byte and new_grain.
Never: starts or stops the platform (bench_grains.py does); writes to stdout (the bench's JSON);
imports bench_grains (it imports this).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grains_cold import first_byte, new_grain, say

from tests.support.procs import grain_processes

if TYPE_CHECKING:
    from tests.integration.frontend.harness import Client
    from tests.support.stack import Stack

MEMORY_GOAL_MB = 15.0


# -- memory ---------------------------------------------------------------------------------


def uss_kb(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Private_Clean:", "Private_Dirty:"):
            total += int(parts[1])
    return total


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- many grains at once -------------------------------------------------------------------


def many_grains(stack: Stack, api: Client, app_id: str, count: int) -> dict[str, Any]:
    grainmgr_pid = int(stack.services()["grainmgr"]["pid"])
    running_before = len(grain_processes(grainmgr_pid))
    gm_before = uss_kb(grainmgr_pid)
    avail_before = mem_available_mb()
    front_port = int(stack.url.rsplit(":", 1)[1])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        grains = list(pool.map(lambda i: new_grain(api, app_id, f"tiny {i}"), range(count)))
    created = time.perf_counter() - t0

    def open_one(grain_id: str) -> bool:
        url = api.api("POST", f"/grains/{grain_id}/sessions").json()["url"]
        host = url.split("/")[2]
        try:
            first_byte(front_port, host, "/", {}, time.perf_counter() + 60)
            return True
        except (OSError, RuntimeError) as exc:
            say(f"grain {grain_id} did not answer: {exc}")
            return False

    t1 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        answered = sum(pool.map(open_one, grains))
    opened = time.perf_counter() - t1
    time.sleep(2)  # let the last starts settle before reading memory
    grains_now = grain_processes(grainmgr_pid)
    bridge_uss = sorted(uss_kb(b) for b, _ in grains_now)
    outer_uss = sorted(uss_kb(o) for _, o in grains_now)
    gm_after = uss_kb(grainmgr_pid)
    running = len(grains_now) - running_before
    gm_growth = (gm_after - gm_before) / max(running, 1)
    bridge_p50 = statistics.median(bridge_uss) if bridge_uss else 0.0
    outer_p50 = statistics.median(outer_uss) if outer_uss else 0.0
    return {
        "grains": count,
        "answered": answered,
        "running_grains": len(grains_now),
        "create_seconds": round(created, 1),
        "open_all_seconds": round(opened, 1),
        "memory": {
            "bridge_uss_mb_p50": round(bridge_p50 / 1024, 2),
            "bridge_uss_mb_max": round(bridge_uss[-1] / 1024, 2) if bridge_uss else 0.0,
            "grainmgr_uss_mb_before": round(gm_before / 1024, 1),
            "grainmgr_uss_mb_after": round(gm_after / 1024, 1),
            "grainmgr_growth_mb_per_grain": round(gm_growth / 1024, 3),
            # The goal's measure: the bridge plus grainmgr's share.
            "platform_mb_per_grain": round((bridge_p50 + gm_growth) / 1024, 2),
            # Not in the goal's measure, but per grain too: the launcher's process outside
            # the sandbox that waits for it.
            "launcher_outer_uss_mb_p50": round(outer_p50 / 1024, 2),
            "platform_mb_per_grain_with_outer": round(
                (bridge_p50 + gm_growth + outer_p50) / 1024, 2
            ),
            "machine_mem_available_drop_mb": round(avail_before - mem_available_mb(), 0),
            "goal_platform_mb_per_grain_max": MEMORY_GOAL_MB,
        },
    }
