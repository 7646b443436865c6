"""Builders of backup archives, good and hostile, for the backup unit tests."""

from __future__ import annotations

import hashlib
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from grainhouse_backup import archive

HEADER = archive.GrainHeader(
    grain_id="g1",
    title="Notes",
    owner_account_id="acct1",
    app_id="app.notes",
    app_version=3,
    package_id="pkg3",
    created_at="2026-01-01T00:00:00+00:00",
)

GOOD = {
    "notes.txt": b"hello\n",
    "empty": b"",
    "sub/déjà vu ✓.md": "unicode ✓".encode(),
    "sub/deeper/blob.bin": bytes(range(256)) * 64,
}


class FileSink:
    """A write-only sink without tell(): the archive must stream."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("wb")

    def write(self, data: bytes) -> int:
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def write_good(path: Path, files: dict[str, bytes] | None = None) -> archive.Metadata:
    files = GOOD if files is None else files
    sink = FileSink(path)
    w = archive.ArchiveWriter(sink)
    dirs: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                w.add_directory(d, 0o755, 1.7e9)
        w.begin_file(name, 0o644, 1.7e9, len(data))
        w.write(data)
        w.end_file()
    meta = w.finish(HEADER)
    sink.close()
    return meta


@dataclass
class Raw:
    """One hand-made entry: exactly the name, mode and bytes given."""

    name: str
    data: bytes = b""
    mode: int = stat.S_IFREG | 0o644
    listed: bool = True  # put it in the metadata checksum list
    compress: int = zipfile.ZIP_DEFLATED


@dataclass
class Hostile:
    entries: list[Raw] = field(default_factory=list)
    metadata: bytes | None = None  # None = a correct list of the entries; b"" = no entry


def _record(raw: Raw) -> archive.FileRecord:
    path = raw.name.removeprefix(archive.DATA_PREFIX).rstrip("/")
    fmt = stat.S_IFMT(raw.mode)
    if fmt == stat.S_IFDIR:
        return archive.FileRecord(path, archive.DIRECTORY, 0o755, 1.7e9)
    if fmt == stat.S_IFLNK:
        return archive.FileRecord(path, archive.SYMLINK, 0o777, 1.7e9, target=raw.data.decode())
    return archive.FileRecord(
        path, archive.REGULAR, 0o644, 1.7e9, len(raw.data), hashlib.sha256(raw.data).hexdigest()
    )


def write_hostile(path: Path, spec: Hostile) -> zipfile.ZipFile:
    zf = zipfile.ZipFile(path, "w")
    for raw in spec.entries:
        info = zipfile.ZipInfo(raw.name, date_time=(2026, 1, 1, 0, 0, 0))
        info.create_system = 3
        info.external_attr = raw.mode << 16
        info.compress_type = raw.compress
        zf.writestr(info, raw.data)
    if spec.metadata is None:
        meta = archive.Metadata(HEADER, [_record(r) for r in spec.entries if r.listed])
        zf.writestr(archive.METADATA_NAME, meta.to_json())
    elif spec.metadata:
        zf.writestr(archive.METADATA_NAME, spec.metadata)
    return zf  # not closed: callers may patch the central directory, then close
