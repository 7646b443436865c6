"""Processes of a running stack as /proc shows them: which bridges belong to which grainmgr.

Owns: nothing; reads /proc only. Trusts: /proc. Never: signals or changes a process.
Other stacks (tests, benches) may run on the machine at the same time: only descendants of the
given grainmgr count.
"""

from __future__ import annotations

import os
from pathlib import Path

from grainhouse_grainmgr.sandbox_init import BRIDGE_NAME


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
    """A grain's bridge: PID 1 of a pid namespace below ours, named `gh-bridge` (the bridge run
    in the init keeps the fork server's command line) or running bridge.py (the exec'd
    fallback). A spare's init (also PID 1 of its namespace, waiting for a grain) is neither."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    ids = fields.get("NSpid", "").split()
    if len(ids) < 2 or ids[-1] != "1":
        return False
    return fields.get("Name", "").strip() == BRIDGE_NAME or any(
        arg.endswith(b"/bridge.py") for arg in cmdline
    )


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
