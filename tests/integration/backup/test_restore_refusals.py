"""Restores of hostile or unfit archives fail their task with the reason, and leave no grain."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import grpc
import pytest

from grainhouse_backup import archive
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

from .conftest import OWNER, Platform, backup_now, new_grain, restore_upload

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]
R = bpb.ArchiveRefusalReason


def grains_of(p: Platform, owner: str) -> set[str]:
    reply = p.grainmgr.ListGrains(
        gpb.ListGrainsRequest(owner_account_id=owner, include_trashed=True), timeout=10
    )
    return {g.grain_id for g in reply.grains}


def build(path: Path, app_id: str, app_version: int, extra: list[tuple[str, bytes]] = ()) -> Path:
    header = archive.GrainHeader("g", "Hostile", OWNER, app_id, app_version, "")
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/ok.txt", b"fine")
        records.append(
            archive.FileRecord(
                "ok.txt", archive.REGULAR, 0o644, 1.7e9, 4, hashlib.sha256(b"fine").hexdigest()
            )
        )
        for name, data in extra:
            zf.writestr(name, data)
        zf.writestr(archive.METADATA_NAME, archive.Metadata(header, records).to_json())
    return path


@pytest.mark.parametrize(
    ("extra", "reason", "words"),
    [
        (
            [("data/../../../etc/cron.d/x", b"evil")],
            R.ARCHIVE_REFUSAL_REASON_ZIP_SLIP,
            "climbs out",
        ),
        ([("/etc/passwd", b"evil")], R.ARCHIVE_REFUSAL_REASON_ABSOLUTE_PATH, "absolute"),
        ([("data/zeros", bytes(8 * 1024 * 1024))], R.ARCHIVE_REFUSAL_REASON_RATIO_BOMB, "ratio"),
        ([("data/unlisted", b"x")], R.ARCHIVE_REFUSAL_REASON_CHECKSUM_MISMATCH, "checksum list"),
    ],
)
def test_hostile_upload_fails_the_task_and_makes_no_grain(
    platform: Platform, tmp_path: Path, extra: list[tuple[str, bytes]], reason: int, words: str
) -> None:
    before = grains_of(platform, OWNER)
    path = build(tmp_path / "h.zip", platform.package.app_id, 1, extra)
    task = restore_upload(platform, path)
    assert task.state == bpb.TASK_STATE_FAILED
    assert task.error.refusal == reason, task.error
    assert words in task.error.message and not task.error.retryable
    assert (
        "/tmp" not in task.error.message and str(platform.stack.data_dir) not in task.error.message
    )
    assert grains_of(platform, OWNER) == before


def test_truncated_upload(platform: Platform, tmp_path: Path) -> None:
    path = build(tmp_path / "t.zip", platform.package.app_id, 1)
    path.write_bytes(path.read_bytes()[:-30])
    task = restore_upload(platform, path)
    assert task.error.refusal == R.ARCHIVE_REFUSAL_REASON_TRUNCATED_OR_CORRUPT


def test_app_not_installed(platform: Platform, tmp_path: Path) -> None:
    before = grains_of(platform, OWNER)
    task = restore_upload(platform, build(tmp_path / "a.zip", "no.such.app", 1))
    assert task.error.refusal == R.ARCHIVE_REFUSAL_REASON_APP_NOT_INSTALLED
    assert "'no.such.app' is not installed" in task.error.message
    assert grains_of(platform, OWNER) == before


def test_app_older_than_backup(platform: Platform, tmp_path: Path) -> None:
    task = restore_upload(platform, build(tmp_path / "o.zip", platform.package.app_id, 999))
    assert task.error.refusal == R.ARCHIVE_REFUSAL_REASON_APP_TOO_OLD
    assert "older than the one that wrote the data (version 999)" in task.error.message


def test_upload_too_large_is_refused_before_reading(platform: Platform) -> None:
    def requests():  # type: ignore[no-untyped-def]
        yield bpb.RestoreBackupRequest(
            options=bpb.RestoreOptions(owner_account_id=OWNER, upload_size_bytes=1 << 50)
        )

    with pytest.raises(grpc.RpcError) as info:
        platform.backup.RestoreBackup(requests(), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ARCHIVE_TOO_LARGE" in (info.value.details() or "")


def test_size_mismatch_and_bad_stream(platform: Platform) -> None:
    def short():  # type: ignore[no-untyped-def]
        yield bpb.RestoreBackupRequest(
            options=bpb.RestoreOptions(owner_account_id=OWNER, upload_size_bytes=10)
        )
        yield bpb.RestoreBackupRequest(chunk=b"12345")

    with pytest.raises(grpc.RpcError) as info:
        platform.backup.RestoreBackup(short(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.RestoreBackup(iter([bpb.RestoreBackupRequest(chunk=b"x")]), timeout=30)
    assert info.value.details() == "the first message must be options"


def test_other_owners_see_nothing_and_ranges(platform: Platform) -> None:
    grain = new_grain(platform, "Private")
    (platform.var_dir(grain.grain_id) / "f").write_bytes(b"data")
    task = backup_now(platform, grain.grain_id)
    assert task.state == bpb.TASK_STATE_SUCCEEDED, task.error
    stranger = "someone-else"
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.GetTask(bpb.GetTaskRequest(task_id=task.task_id, owner_account_id=stranger))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        list(
            platform.backup.DownloadBackup(
                bpb.DownloadBackupRequest(backup_id=task.backup_id, owner_account_id=stranger)
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.GetBackup(
            bpb.GetBackupRequest(backup_id=task.backup_id, owner_account_id=stranger)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    head = platform.backup.GetBackup(
        bpb.GetBackupRequest(backup_id=task.backup_id, owner_account_id=OWNER)
    )
    assert head.backup.backup_id == task.backup_id and head.backup.grain_id == grain.grain_id
    assert head.offset == 0 and head.length == head.backup.size_bytes > 0
    assert head.filename.endswith(".zip") and head.content_type == "application/zip"
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.CreateBackup(
            bpb.CreateBackupRequest(grain_id=grain.grain_id, owner_account_id=stranger)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    info_ = platform.backup.ListBackups(
        bpb.ListBackupsRequest(owner_account_id=OWNER, grain_id=grain.grain_id)
    ).backups[0]
    with pytest.raises(grpc.RpcError) as info:
        list(
            platform.backup.DownloadBackup(
                bpb.DownloadBackupRequest(
                    backup_id=task.backup_id, owner_account_id=OWNER, offset=info_.size_bytes + 1
                )
            )
        )
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    end = list(
        platform.backup.DownloadBackup(
            bpb.DownloadBackupRequest(
                backup_id=task.backup_id, owner_account_id=OWNER, offset=info_.size_bytes
            )
        )
    )
    assert len(end) == 1 and end[0].header.length == 0
    platform.backup.DeleteBackup(
        bpb.DeleteBackupRequest(backup_id=task.backup_id, owner_account_id=OWNER)
    )
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.DeleteBackup(
            bpb.DeleteBackupRequest(backup_id=task.backup_id, owner_account_id=OWNER)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.GetBackup(
            bpb.GetBackupRequest(backup_id=task.backup_id, owner_account_id=OWNER)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_request_key_makes_create_idempotent(platform: Platform) -> None:
    grain = new_grain(platform, "Idem")
    req = bpb.CreateBackupRequest(grain_id=grain.grain_id, owner_account_id=OWNER, request_key="k1")
    first = platform.backup.CreateBackup(req)
    second = platform.backup.CreateBackup(req)
    assert first.task_id == second.task_id
