"""A restore reads the archive once: content streams into grainmgr's import while the confined
validator still checks it, so an archive that fails only late (a checksum or CRC in a file
after megabytes of good data) must still end with its refusal, no grain and no staging left."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from grainhouse_backup import archive
from grainhouse_proto import backup_pb2 as bpb

from .conftest import OWNER, Platform, restore_upload
from .test_restore_refusals import grains_of

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]
R = bpb.ArchiveRefusalReason
GOOD_FILES = 6
GOOD_BYTES = 3 * 1024 * 1024  # each: several full data parts reach grainmgr before the bad one


def build(path: Path, app_id: str, last: bytes, listed_sha: str) -> Path:
    """GOOD_FILES good files, then `last` stored with `listed_sha` as its listed checksum."""
    header = archive.GrainHeader("g", "Late", OWNER, app_id, 1, "")
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(GOOD_FILES):
            body = os.urandom(GOOD_BYTES)
            zf.writestr(f"data/good{i}", body)
            records.append(
                archive.FileRecord(
                    f"good{i}", archive.REGULAR, 0o644, 1.7e9, len(body),
                    hashlib.sha256(body).hexdigest(),
                )
            )  # fmt: skip
        zf.writestr("data/zlast", last)
        records.append(
            archive.FileRecord("zlast", archive.REGULAR, 0o644, 1.7e9, len(last), listed_sha)
        )
        zf.writestr(archive.METADATA_NAME, archive.Metadata(header, records).to_json())
    return path


def staging(p: Platform) -> list[str]:
    return [e.name for root in p.stack.data_dir.glob("*/staging") for e in root.iterdir()]


def refused_cleanly(p: Platform, path: Path, reason: int, words: str, entry: str) -> None:
    before = grains_of(p, OWNER)
    task = restore_upload(p, path)
    assert task.state == bpb.TASK_STATE_FAILED
    assert task.error.refusal == reason, task.error
    assert words in task.error.message, task.error.message
    assert task.error.entry_name == entry
    assert grains_of(p, OWNER) == before
    deadline = time.monotonic() + 30
    while [n for n in staging(p) if n.startswith("import-")]:  # removed as the import ends
        assert time.monotonic() < deadline, f"an import staging dir was left: {staging(p)}"
        time.sleep(0.1)


def test_checksum_mismatch_found_after_streaming_good_data(
    platform: Platform, tmp_path: Path
) -> None:
    last = b"the last file" * 1000
    wrong = hashlib.sha256(b"something else").hexdigest()
    path = build(tmp_path / "late.zip", platform.package.app_id, last, wrong)
    refused_cleanly(
        platform, path, R.ARCHIVE_REFUSAL_REASON_CHECKSUM_MISMATCH, "checksum", "data/zlast"
    )


def test_corrupt_entry_found_after_streaming_good_data(platform: Platform, tmp_path: Path) -> None:
    last = os.urandom(2 * 1024 * 1024)
    path = build(
        tmp_path / "crc.zip", platform.package.app_id, last, hashlib.sha256(last).hexdigest()
    )
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data/zlast")
    with path.open("r+b") as f:  # flip one byte in the middle of the stored body: a CRC error
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + len(last) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    refused_cleanly(
        platform, path, R.ARCHIVE_REFUSAL_REASON_TRUNCATED_OR_CORRUPT, "CRC", "data/zlast"
    )
