"""Backups through the real platform: grainmgr's snapshot in, a ZIP out, a new grain back."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

from .conftest import OWNER, Platform, backup_now, download, new_grain, restore_upload, tree

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]


def fill(var: Path, files: int = 300) -> None:
    (var / "empty-dir").mkdir()
    (var / "empty-file").write_bytes(b"")
    (var / "ünïcødé ✓ 名前").mkdir()
    (var / "ünïcødé ✓ 名前" / "ファイル.txt").write_text("こんにちは")
    os.symlink("ünïcødé ✓ 名前/ファイル.txt", var / "link")
    for i in range(files):
        d = var / "many" / f"d{i % 17}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(i * 37 % 5000))
    (var / "secret").write_bytes(b"mode 600")
    (var / "secret").chmod(0o600)


def test_round_trip_is_byte_identical(platform: Platform, tmp_path: Path) -> None:
    grain = new_grain(platform, "Round trip ✓")
    var = platform.var_dir(grain.grain_id)
    fill(var)
    before = tree(var)

    task = backup_now(platform, grain.grain_id)
    assert task.state == bpb.TASK_STATE_SUCCEEDED, task.error
    listed = platform.backup.ListBackups(
        bpb.ListBackupsRequest(owner_account_id=OWNER, grain_id=grain.grain_id)
    ).backups
    assert [b.backup_id for b in listed] == [task.backup_id]
    info = listed[0]
    assert info.app_id == platform.package.app_id and info.grain_title == "Round trip ✓"

    # Resumable download: the first part, then the rest from where it stopped.
    archive = tmp_path / "b.zip"
    head = download(platform, task.backup_id, archive, length=1000)
    assert (head.offset, head.length, head.content_type) == (0, 1000, "application/zip")
    assert head.filename.endswith(".zip") and "/" not in head.filename
    download(platform, task.backup_id, archive, offset=1000)
    assert archive.stat().st_size == info.size_bytes
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == info.sha256
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert "grainhouse-backup.json" in zf.namelist()

    restored = restore_upload(platform, archive)
    assert restored.state == bpb.TASK_STATE_SUCCEEDED, restored.error
    assert restored.grain_id and restored.grain_id != grain.grain_id
    new = platform.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=restored.grain_id))
    assert new.owner_account_id == OWNER and new.title == "Round trip ✓ (restored)"
    assert tree(platform.var_dir(restored.grain_id)) == before

    # And from the stored copy, without an upload.
    again = platform.backup.RestoreBackup(
        iter(
            [
                bpb.RestoreBackupRequest(
                    options=bpb.RestoreOptions(
                        owner_account_id=OWNER, backup_id=task.backup_id, title="Again"
                    )
                )
            ]
        )
    )
    from .conftest import wait_task

    done = wait_task(platform, again.task_id)
    assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
    assert tree(platform.var_dir(done.grain_id)) == before
