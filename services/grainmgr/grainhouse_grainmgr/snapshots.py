"""Grain archives: consistent snapshots of a grain's /var out (export) and validated ones in.

Owns: `<data_dir>/grainmgr/staging/` (imports being checked) and the archive stream order
(grainmgr.proto GrainArchivePart: header, files with data, trailer).
Trusts: transfers.py (Snapshots.hold) to keep the grain still — frozen, or stopped and kept from
starting — for the whole time its /var is streamed, so one listing and the reads that follow
see one instant; nothing in an uploaded archive (every path, type, size, total and the
checksum are checked again here).
Never: copies a grain's /var for an export (it is read in place, once); streams a /var whose
grain may run; follows a symlink while reading or writing; writes an import anywhere but its
staging directory until all of it was valid; leaves a staging directory behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import posixpath
import stat
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainhouse_common.errors import GrainhouseError, Kind

FORMAT_VERSION = 1
MAX_DATA_PART = 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_ENTRIES = 1_000_000
REGULAR, DIRECTORY, SYMLINK = 1, 2, 3
# Import: files up to this size are written whole by IMPORT_WRITERS threads, in parallel with
# the checks and with each other (creating a file is kernel time, which runs without the GIL:
# measured 250 us per file on ext4 here, more than writing 100 KiB into it); larger ones are
# written as their data comes. At most IMPORT_IN_FLIGHT_BYTES wait for a writer.
IMPORT_SMALL_FILE_BYTES = MAX_DATA_PART
IMPORT_WRITERS = 2
IMPORT_IN_FLIGHT_BYTES = 16 * 1024 * 1024
IMPORT_IN_FLIGHT_FILES = 1024
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Entry:
    path: str
    type: int
    mode: int
    mtime: float
    size: int = 0
    target: str = ""


# -- export ------------------------------------------------------------------------------------


def walk_snapshot(root: Path) -> Iterator[Entry | int]:
    """Entries in stream order (a directory before its contents); ints count skipped files."""

    def visit(directory: Path, prefix: str) -> Iterator[Entry | int]:
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            try:
                name = os.fsdecode(item.name)
                name.encode("utf-8")
            except UnicodeError:
                yield 1
                continue
            rel = f"{prefix}{name}"
            st = item.stat(follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                yield Entry(rel, DIRECTORY, mode, st.st_mtime)
                yield from visit(Path(item.path), rel + "/")
            elif stat.S_ISLNK(st.st_mode):
                yield Entry(rel, SYMLINK, mode, st.st_mtime, target=os.readlink(item.path))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, REGULAR, mode, st.st_mtime, size=st.st_size)
            else:
                yield 1

    yield from visit(root, "")


def ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


async def stream_snapshot(root: Path) -> AsyncIterator[tuple[str, Any]]:
    """("file", Entry) / ("data", bytes) / ("trailer", dict) in archive order."""
    entries = await asyncio.to_thread(lambda: list(walk_snapshot(root)))
    digest = hashlib.sha256()
    count = total = skipped = 0
    for entry in entries:
        if isinstance(entry, int):
            skipped += entry
            continue
        count += 1
        yield "file", entry
        if entry.type != REGULAR:
            continue
        # The grain is held still, so this is the file just listed; O_NOFOLLOW and the type
        # check are a second line (a fifo would block, a symlink would leave /var).
        fd = os.open(root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise GrainhouseError(Kind.INTERNAL, "the snapshot changed while read")
            left = entry.size
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(MAX_DATA_PART, left))
                if not chunk:
                    raise GrainhouseError(Kind.INTERNAL, "the snapshot changed while read")
                left -= len(chunk)
                total += len(chunk)
                digest.update(chunk)
                yield "data", chunk
    yield (
        "trailer",
        {
            "file_count": count,
            "total_bytes": total,
            "data_sha256": digest.hexdigest(),
            "skipped_files": skipped,
        },
    )


def make_staging(root: Path, prefix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


# -- import ------------------------------------------------------------------------------------


def invalid(message: str) -> GrainhouseError:
    return GrainhouseError(Kind.INVALID, f"archive refused: {message}")


def check_path(path: str) -> None:
    if not path or "\0" in path or len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise invalid(f"bad path {path[:100]!r}")
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise invalid(f"path {path[:100]!r} is not a clean relative path")


def _write_all(fd: int, chunk: bytes) -> None:
    written = os.write(fd, chunk)
    if written < len(chunk):  # rare on a regular file (a signal, a full disk): go on
        view = memoryview(chunk)
        while written < len(chunk):
            written += os.write(fd, view[written:])


def _set_times(fd: int, mtime: float) -> None:
    with contextlib.suppress(OSError, ValueError, OverflowError):  # odd times are not fatal
        os.utime(fd, (mtime, mtime))  # futimens on the open file, after its last write


def _create(path: str, mode: int) -> int:
    """A new file: never through a symlink, never over an entry, mode set on the fd."""
    fd = os.open(path, _CREATE, 0o600)
    if mode != 0o600:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _write_small(path: str, mode: int, mtime: float, chunks: list[bytes]) -> int:
    """One whole small file (runs on a writer thread); its size."""
    fd = _create(path, mode)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        _set_times(fd, mtime)
    finally:
        os.close(fd)
    return sum(map(len, chunks))


@dataclass
class ImportWriter:
    """Applies archive parts to a staging directory, checking every rule as it goes.

    Every check runs here, in stream order, on the caller's thread. Writing is plain `os`
    calls on a descriptor (created with O_EXCL | O_NOFOLLOW, fchmod, os.write, futimens after
    the last byte, close; no buffered file object, no second lookup of the path): a small
    file, once all its data is in, goes whole to one of IMPORT_WRITERS threads; a large one is
    written here as it comes. Directories and symlinks are made here, in order, so a file's
    directory exists before its writer runs. `finish` waits for every writer and raises the
    first error; `abort` waits for them too (the caller removes the directory next).
    """

    root: Path
    quota_bytes: int
    # False when the caller checked every file's content itself (ImportGrainOptions.
    # content_verified): the stream is then not hashed, and the trailer carries no digest.
    hash_data: bool = True
    dirs: set[str] = field(default_factory=lambda: {""})
    seen: set[str] = field(default_factory=set)
    digest: Any = field(default_factory=hashlib.sha256)
    count: int = 0
    total: int = 0
    # The current regular file: its path, mode, mtime and bytes still to come; its data so
    # far while it may be small (`_chunks`), or its descriptor once it is written here (`_fd`).
    _path: str = ""
    _mode: int = 0
    _mtime: float = 0.0
    _left: int = -1  # -1: no regular file is open
    _chunks: list[bytes] = field(default_factory=list)
    _buffered: int = 0
    _fd: int = -1
    _pool: ThreadPoolExecutor | None = None
    _writing: deque[Future[int]] = field(default_factory=deque)
    _in_flight: int = 0

    def file(self, entry: Entry) -> None:
        self._end_file()
        self.count += 1
        if self.count > MAX_ENTRIES:
            raise GrainhouseError(Kind.TOO_LARGE, "archive has too many entries")
        check_path(entry.path)
        if entry.path in self.seen:
            raise invalid(f"duplicate path {entry.path[:100]!r}")
        self.seen.add(entry.path)
        parent = posixpath.dirname(entry.path)
        if parent not in self.dirs:
            raise invalid(f"{entry.path[:100]!r} comes before its directory")
        target = f"{os.fspath(self.root)}/{entry.path}"
        mode = entry.mode & 0o1777  # setuid/setgid cleared
        if entry.type == DIRECTORY:
            if entry.size:
                raise invalid("a directory has no data")
            os.mkdir(target, 0o700)
            os.chmod(target, mode | 0o700)
            self.dirs.add(entry.path)
        elif entry.type == SYMLINK:
            t = entry.target
            if not t or "\0" in t or t.startswith("/") or len(t) > MAX_PATH_BYTES:
                raise invalid(f"symlink {entry.path[:100]!r} has a bad target")
            resolved = posixpath.normpath(posixpath.join(parent, t))
            if resolved == ".." or resolved.startswith("../"):
                raise invalid(f"symlink {entry.path[:100]!r} points out of /var")
            os.symlink(t, target)
        elif entry.type == REGULAR:
            if entry.size < 0:
                raise invalid("negative size")
            if self.total + entry.size > self.quota_bytes:
                raise GrainhouseError(Kind.TOO_LARGE, "archive is larger than the grain quota")
            self._path, self._mode, self._mtime, self._left = target, mode, entry.mtime, entry.size
            if entry.size > IMPORT_SMALL_FILE_BYTES:
                self._fd = _create(target, mode)
        else:
            raise invalid(f"{entry.path[:100]!r} has an unknown type")

    def data(self, chunk: bytes) -> None:
        if self._left < 0:
            raise invalid("data outside a regular file")
        if not chunk or len(chunk) > MAX_DATA_PART:
            raise invalid("a data part must be 1 byte to 1 MiB")
        if len(chunk) > self._left:
            raise invalid("more data than the file's size_bytes")
        self._left -= len(chunk)
        self.total += len(chunk)
        if self.hash_data:
            self.digest.update(chunk)
        if self._fd >= 0:
            _write_all(self._fd, chunk)
        else:
            self._chunks.append(chunk)
            self._buffered += len(chunk)

    def _end_file(self) -> None:
        if self._left < 0:
            return
        if self._left:
            raise invalid("a file has less data than its size_bytes")
        self._left = -1
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                _set_times(fd, self._mtime)
            finally:
                os.close(fd)
            return
        chunks, size = self._chunks, self._buffered
        self._chunks, self._buffered = [], 0
        self._reap(block=False)
        while self._writing and (
            self._in_flight + size > IMPORT_IN_FLIGHT_BYTES
            or len(self._writing) >= IMPORT_IN_FLIGHT_FILES
        ):
            self._reap(block=True)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IMPORT_WRITERS, thread_name_prefix="import-write")
        self._writing.append(
            self._pool.submit(_write_small, self._path, self._mode, self._mtime, chunks)
        )
        self._in_flight += size

    def _reap(self, *, block: bool) -> None:
        """Collect finished writers (the oldest, waiting for it, if `block`); raise an error."""
        while self._writing and (block or self._writing[0].done()):
            self._in_flight -= self._writing.popleft().result()
            block = False

    def _drain(self) -> None:
        """Wait for every writer; the first error (in stream order) is raised."""
        try:
            while self._writing:
                self._reap(block=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
                self._writing.clear()

    def finish(self, trailer: dict[str, Any]) -> None:
        try:
            self._end_file()  # may already raise a finished writer's error
        except BaseException:
            self.abort()  # no writer may outlive a failed finish
            raise
        self._drain()
        if trailer["file_count"] != self.count or trailer["total_bytes"] != self.total:
            raise invalid("the trailer's totals do not match the archive (truncated?)")
        if not self.hash_data:
            if trailer["data_sha256"]:
                raise invalid("a content_verified import carries no data checksum")
        elif trailer["data_sha256"] != self.digest.hexdigest():
            raise invalid("the data checksum does not match")

    def abort(self) -> None:
        """Stop writing: no writer runs once this returns (it waits for those running)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._writing.clear()
        self._chunks, self._left = [], -1
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
