"""A backup taken while the app writes as fast as it can restores to one consistent instant."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

from .conftest import OWNER, Platform, backup_now, latest, start_writer, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]


def check_instant(var: Path) -> int:
    """Every record up to `latest` is there and complete; returns latest."""
    last = latest(var)
    assert last > 0
    for n in range(max(1, last - 1000), last + 1):
        body = (var / "records" / str(n)).read_bytes()
        line = f"{n}\n".encode()
        assert body == line * (4096 // len(line)), f"record {n} of {last} is torn"
    return last


def test_backup_during_heavy_writes_is_consistent(platform: Platform, tmp_path: Path) -> None:
    grain, var = start_writer(platform, tmp_path, "Busy")
    deadline = time.monotonic() + 60
    while latest(var) < 1500:  # the app is busy writing
        assert time.monotonic() < deadline, "the writer app did not write"
        time.sleep(0.1)

    task = backup_now(platform, grain.grain_id)
    assert task.state == bpb.TASK_STATE_SUCCEEDED, task.error
    restored = platform.backup.RestoreBackup(
        iter(
            [
                bpb.RestoreBackupRequest(
                    options=bpb.RestoreOptions(owner_account_id=OWNER, backup_id=task.backup_id)
                )
            ]
        )
    )
    done = wait_task(platform, restored.task_id)
    assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
    snapshot_latest = check_instant(platform.var_dir(done.grain_id))
    assert snapshot_latest >= 1500
    # The original grain runs again after the snapshot and keeps writing.
    deadline = time.monotonic() + 60
    while latest(var) <= snapshot_latest:
        assert time.monotonic() < deadline, "the grain did not resume after the backup"
        time.sleep(0.1)
    platform.grainmgr.StopGrain(gpb.StopGrainRequest(grain_id=grain.grain_id), timeout=60)
