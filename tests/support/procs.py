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

    found = []
    for pid, parent in tree.items():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"/bridge.py") for arg in args) and ours(pid):
            found.append((pid, parent))
    return found
