"""The backup archive format: a ZIP written as a stream, and its metadata entry.

Owns: the layout of a backup archive (docs/backup.md): every file of the grain's /var under
`data/`, then one last entry `grainhouse-backup.json` holding the grain's header and a SHA-256
per file. Also the rules that turn a validated archive back into entries, in order.
Trusts: the caller to hand it a sink that accepts bytes in order (the archive is never seeked,
never held whole in memory and never copied to a second temporary file); for reading, that
validator.py has already accepted the archive.
Never: writes a path outside the `data/` prefix; reads the network or the filesystem itself.

Why stdlib `zipfile` and not `stream-zip`: `ZipFile(sink, "w")` on a sink without `tell()`
already writes local headers with data descriptors (streamable), picks ZIP64 per entry from the
declared size, and deflates in C with the GIL released. It needs no new dependency, and its
reader is the one the validator uses, so writer and reader agree on every edge case.

Why the metadata entry comes last: its per-file checksums are only known once the data went
by, and the archive is written in one pass. Readers find it through the central directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Protocol, cast

FORMAT = "grainhouse-backup"
FORMAT_VERSION = 1
METADATA_NAME = "grainhouse-backup.json"
DATA_PREFIX = "data/"
REGULAR, DIRECTORY, SYMLINK = "file", "dir", "symlink"
CHUNK = 1024 * 1024
# A file whose first 8 KiB shrink by less than 3% at deflate level 1 is stored, not deflated
# (a larger sample judged no better and cost ~0.8 ms per file: most of a small-file backup).
SAMPLE = 8 * 1024
INCOMPRESSIBLE = 0.97
# Metadata larger than this is refused on read: it is parsed in memory.
MAX_METADATA_BYTES = 256 * 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


@dataclass
class FileRecord:
    """One entry of the grain's /var as the metadata lists it."""

    path: str  # relative to /var, "/"-separated
    type: str  # REGULAR, DIRECTORY or SYMLINK
    mode: int  # permission bits only
    mtime: float  # seconds since the epoch, UTC
    size: int = 0  # REGULAR: byte count
    sha256: str = ""  # REGULAR: hex digest of the content
    target: str = ""  # SYMLINK: link target


@dataclass
class GrainHeader:
    """What the archive holds, as the metadata entry states it."""

    grain_id: str
    title: str
    owner_account_id: str
    app_id: str
    app_version: int
    package_id: str
    app_title: str = ""
    app_marketing_version: str = ""
    created_at: str = ""  # the grain's creation time, ISO 8601 UTC
    snapshot_at: str = ""  # when grainmgr took the snapshot, ISO 8601 UTC
    platform_version: str = ""


@dataclass
class Metadata:
    header: GrainHeader
    files: list[FileRecord] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **asdict(self.header),
            "file_count": len(self.files),
            "total_bytes": sum(f.size for f in self.files),
            "files": [asdict(f) for f in self.files],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class MetadataError(ValueError):
    """The metadata entry is not one we can trust the shape of."""


def _str(doc: dict[str, Any], key: str, *, required: bool = False, limit: int = 4096) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise MetadataError(f"metadata field {key!r} is not a string of at most {limit} chars")
    if required and not value:
        raise MetadataError(f"metadata field {key!r} is empty")
    return value


def _int(doc: dict[str, Any], key: str, limit: int = 2**63) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
        raise MetadataError(f"metadata field {key!r} is not a non-negative integer")
    return value


def parse_metadata(raw: bytes) -> Metadata:
    """Parse and check the shape of a metadata entry (content checks are the validator's)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError("metadata is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MetadataError("metadata is not a Grainhouse backup header")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise MetadataError(f"unknown metadata format version {version!r}")
    header = GrainHeader(
        grain_id=_str(doc, "grain_id"),
        title=_str(doc, "title"),
        owner_account_id=_str(doc, "owner_account_id"),
        app_id=_str(doc, "app_id", required=True, limit=256),
        app_version=_int(doc, "app_version", 2**32),
        package_id=_str(doc, "package_id"),
        app_title=_str(doc, "app_title"),
        app_marketing_version=_str(doc, "app_marketing_version"),
        created_at=_str(doc, "created_at"),
        snapshot_at=_str(doc, "snapshot_at"),
        platform_version=_str(doc, "platform_version"),
    )
    files_doc = doc.get("files")
    if not isinstance(files_doc, list):
        raise MetadataError("metadata has no file list")
    files = []
    for item in files_doc:
        if not isinstance(item, dict):
            raise MetadataError("metadata file list holds a non-object")
        kind = _str(item, "type")
        if kind not in (REGULAR, DIRECTORY, SYMLINK):
            raise MetadataError(f"metadata lists an entry of unknown type {kind!r}")
        mtime = item.get("mtime", 0)
        if not isinstance(mtime, int | float) or isinstance(mtime, bool):
            raise MetadataError("metadata field 'mtime' is not a number")
        files.append(
            FileRecord(
                path=_str(item, "path", required=True),
                type=kind,
                mode=_int(item, "mode", 0o10000),
                mtime=float(mtime),
                size=_int(item, "size"),
                sha256=_str(item, "sha256", limit=64),
                target=_str(item, "target"),
            )
        )
    if _int(doc, "file_count") != len(files):
        raise MetadataError("metadata file_count disagrees with its file list")
    return Metadata(header=header, files=files)


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # ZIP stores local-less DOS times from 1980; the exact mtime lives in the metadata.
    t = dt.datetime.fromtimestamp(max(mtime, 315532800.0), dt.UTC)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


class ArchiveWriter:
    """Writes one archive to a sink in a single forward pass.

    Usage: `add_directory` / `add_symlink` / `begin_file` + `write` ... + `end_file`, in the
    order grainmgr streams them, then `finish(header)`.
    """

    def __init__(self, sink: Sink, compress_level: int = 6) -> None:
        # typeshed wants a closable file; zipfile only writes and flushes a non-seekable sink.
        self._zip = zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, allowZip64=True)  # type: ignore[call-overload]  # Sink has no close()
        self._level = compress_level
        self._files: list[FileRecord] = []
        self._current: IO[bytes] | None = None
        self._pending: zipfile.ZipInfo | None = None
        self._record: FileRecord | None = None
        self._hash: Any = None
        self._written = 0

    @property
    def files(self) -> list[FileRecord]:
        return self._files

    def _info(self, name: str, mode: int, mtime: float) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(DATA_PREFIX + name, date_time=_date_time(mtime))
        info.create_system = 3  # Unix, so readers honour the mode bits below
        info.external_attr = (mode & 0xFFFF) << 16
        return info

    def add_directory(self, path: str, mode: int, mtime: float) -> None:
        self._require_no_file()
        info = self._info(path.rstrip("/") + "/", stat.S_IFDIR | (mode & 0o7777), mtime)
        info.external_attr |= 0x10  # MS-DOS directory bit, for unzip tools
        self._zip.writestr(info, b"")
        self._files.append(FileRecord(path, DIRECTORY, mode & 0o7777, mtime))

    def add_symlink(self, path: str, target: str, mtime: float) -> None:
        self._require_no_file()
        info = self._info(path, stat.S_IFLNK | 0o777, mtime)
        self._zip.writestr(info, target.encode(), compress_type=zipfile.ZIP_STORED)
        self._files.append(FileRecord(path, SYMLINK, 0o777, mtime, target=target))

    def begin_file(self, path: str, mode: int, mtime: float, size: int) -> None:
        self._require_no_file()
        self._pending = self._info(path, stat.S_IFREG | (mode & 0o7777), mtime)
        self._pending.file_size = size  # lets zipfile choose ZIP64 only when it is needed
        self._record = FileRecord(path, REGULAR, mode & 0o7777, mtime, size=size)
        self._hash = hashlib.sha256()
        self._written = 0
        if size == 0:
            self._open(zipfile.ZIP_STORED)

    def _open(self, method: int) -> None:
        info = self._pending
        assert info is not None
        info.compress_type = method
        info._compresslevel = self._level  # type: ignore[attr-defined]  # per-entry level
        self._current = self._zip.open(info, "w")
        self._pending = None

    def _choose(self, first: bytes) -> int:
        """Store what does not compress (media, archives, encrypted data): deflating it costs
        most of the time and saves nothing. Decided on a sample of the file's first chunk,
        which is why opening the entry waits for the first data."""
        if self._level == 0:
            return zipfile.ZIP_STORED
        sample = first[:SAMPLE]
        if len(zlib.compress(sample, 1)) > len(sample) * INCOMPRESSIBLE:
            return zipfile.ZIP_STORED
        return zipfile.ZIP_DEFLATED

    def write(self, data: bytes) -> None:
        if self._record is None:
            raise ValueError("data outside a regular file")
        if self._current is None:
            self._open(self._choose(data))
        assert self._current is not None
        self._written += len(data)
        if self._written > self._record.size:
            raise ValueError(f"file {self._record.path!r} is longer than it declared")
        self._hash.update(data)
        self._current.write(data)

    def end_file(self) -> None:
        if self._record is None:
            return
        if self._written != self._record.size:
            raise ValueError(f"file {self._record.path!r} is shorter than it declared")
        assert self._current is not None
        self._current.close()
        self._record.sha256 = self._hash.hexdigest()
        self._files.append(self._record)
        self._current = None
        self._record = None

    def _require_no_file(self) -> None:
        self.end_file()

    def abandon(self) -> None:
        """Drop a failed archive without writing anything more to the sink (the caller
        discards the sink). Without this, zipfile's finalisers would write end records."""
        if self._current is not None:
            # Marks it closed without zipfile's close (which would write a data descriptor).
            # zipfile's entry writer is a BufferedIOBase; typeshed says only IO[bytes].
            io.BufferedIOBase.close(cast(io.BufferedIOBase, self._current))
            self._current = None
        self._zip._writing = False
        self._zip.fp = None  # close() is then a no-op

    def finish(self, header: GrainHeader) -> Metadata:
        """Write the metadata entry and the central directory. The sink is then complete."""
        self.end_file()
        meta = Metadata(header=header, files=self._files)
        info = zipfile.ZipInfo(
            METADATA_NAME, date_time=_date_time(dt.datetime.now(dt.UTC).timestamp())
        )
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        self._zip.writestr(info, meta.to_json(), compress_type=zipfile.ZIP_DEFLATED)
        self._zip.close()
        return meta


def read_metadata_raw(zf: zipfile.ZipFile) -> bytes:
    """The metadata entry's bytes (size-capped before it is read)."""
    try:
        info = zf.getinfo(METADATA_NAME)
    except KeyError as exc:
        raise MetadataError(f"the archive has no {METADATA_NAME}") from exc
    if info.file_size > MAX_METADATA_BYTES:
        raise MetadataError("the metadata entry is too large")
    return zf.read(info)


def read_metadata(zf: zipfile.ZipFile) -> Metadata:
    """The metadata entry of an open archive (size-capped before it is read)."""
    return parse_metadata(read_metadata_raw(zf))


def iter_content(zf: zipfile.ZipFile, record: FileRecord) -> Iterator[bytes]:
    """The content of one regular file, in chunks of at most CHUNK bytes."""
    with zf.open(DATA_PREFIX + record.path) as entry:
        while chunk := entry.read(CHUNK):
            yield chunk
