"""A grain with a file over 1 GiB: byte-identical round trip, backup's memory stays flat."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from grainhouse_proto import backup_pb2 as bpb

from .conftest import OWNER, Platform, backup_now, new_grain, tree, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]
SIZE = 1024**3 + 4096 + 7  # over 1 GiB, not a multiple of any chunk size


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_one_gib_file_round_trip_with_flat_memory(platform: Platform) -> None:
    grain = new_grain(platform, "Big")
    var = platform.var_dir(grain.grain_id)
    block = os.urandom(4 * 1024 * 1024)  # incompressible, so no ratio-bomb refusal
    with (var / "big.bin").open("wb") as f:
        left = SIZE
        i = 0
        while left:
            # Vary every block so no two are equal (deduplicating layers cannot cheat).
            piece = hashlib.sha256(i.to_bytes(8, "big")).digest() + block
            piece = piece[: min(left, len(piece))]
            f.write(piece)
            left -= len(piece)
            i += 1
    (var / "small").write_bytes(b"next to a big one")
    before = tree(var)
    pid = int(platform.stack.services()["backup"]["pid"])

    task = backup_now(platform, grain.grain_id)
    assert task.state == bpb.TASK_STATE_SUCCEEDED, task.error
    restore = platform.backup.RestoreBackup(
        iter(
            [
                bpb.RestoreBackupRequest(
                    options=bpb.RestoreOptions(owner_account_id=OWNER, backup_id=task.backup_id)
                )
            ]
        ),
        timeout=60,
    )
    done = wait_task(platform, restore.task_id, timeout=600)
    assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
    assert tree(platform.var_dir(done.grain_id)) == before
    # The archive (over 1 GiB) never sat in the service's memory.
    assert peak_rss(pid) < 400 * 1024**2
