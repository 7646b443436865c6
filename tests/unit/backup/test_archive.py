"""The archive writer streams a valid ZIP that our reader and Info-ZIP's unzip both accept."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from grainhouse_backup import archive
from tests.unit.backup.conftest import GOOD, HEADER, FileSink, write_good

pytestmark = pytest.mark.unit


def test_streamed_archive_round_trips(tmp_path: Path) -> None:
    files = dict(GOOD)
    files["random.bin"] = os.urandom(300_000)
    files["text.txt"] = b"compressible " * 50_000
    meta = write_good(tmp_path / "a.zip", files)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.testzip() is None
        back = archive.read_metadata(zf)
        assert back.header == HEADER
        assert [r.path for r in back.files] == [r.path for r in meta.files]
        for record in back.files:
            if record.type == archive.REGULAR:
                data = b"".join(archive.iter_content(zf, record))
                assert data == files[record.path]
                assert record.sha256 == hashlib.sha256(data).hexdigest()
        # Incompressible data is stored, compressible data deflated.
        assert zf.getinfo("data/random.bin").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("data/text.txt").compress_type == zipfile.ZIP_DEFLATED
        assert zf.getinfo("data/sub/").external_attr >> 16 & 0o170000 == 0o040000


def test_writer_refuses_a_file_longer_or_shorter_than_declared(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "x.zip")
    w = archive.ArchiveWriter(sink)
    w.begin_file("a", 0o644, 0, 3)
    with pytest.raises(ValueError, match="longer"):
        w.write(b"abcd")
    w.abandon()
    sink.close()
    sink = FileSink(tmp_path / "y.zip")
    w2 = archive.ArchiveWriter(sink)
    w2.begin_file("a", 0o644, 0, 3)
    w2.write(b"ab")
    with pytest.raises(ValueError, match="shorter"):
        w2.end_file()
    w2.abandon()
    sink.close()


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip is not installed")
def test_unzip_accepts_it(tmp_path: Path) -> None:
    write_good(tmp_path / "a.zip")
    out = subprocess.run(
        ["unzip", "-t", str(tmp_path / "a.zip")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No errors detected" in out.stdout


def test_metadata_round_trip_and_refusals() -> None:
    meta = archive.Metadata(HEADER, [archive.FileRecord("a", archive.REGULAR, 0o644, 1.0, 1, "ab")])
    assert archive.parse_metadata(meta.to_json()) == meta
    with pytest.raises(archive.MetadataError, match="file_count"):
        raw = meta.to_json().replace(b'"file_count":1', b'"file_count":2')
        archive.parse_metadata(raw)
