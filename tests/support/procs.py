"""Processes of a running stack as /proc shows them: which bridges belong to which grainmgr.

Owns: nothing; reads /proc only. Trusts: /proc. Never: signals or changes a process.
Other stacks (tests, benches) may run on the machine at the same time: only descendants of the
given grainmgr count.
"""

from __future__ import annotations

import os
from pathlib import Path


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def is_grain_init(pid: int) -> bool:
    """PID 1 of a pid namespace below ours: a grain's init, which is its bridge (run in the
    init itself, so its command line is the fork server's, not bridge.py's)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return len(ids) >= 2 and ids[-1] == "1"
    return False


def grain_processes(grainmgr_pid: int) -> list[tuple[int, int]]:
    """(bridge pid, its parent) for every grain of this grainmgr. The parent is the launcher's
    per-grain process outside the sandbox, which lives as long as the grain."""
    tree = parents()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = tree.get(pid, 0)
            if pid == grainmgr_pid:
                return True
        return False

    return [(pid, parent) for pid, parent in tree.items() if is_grain_init(pid) and ours(pid)]
