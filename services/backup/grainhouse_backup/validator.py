"""The hostile-archive validator: one confined process per archive, one verdict as JSON.

Owns: the rules an uploaded archive must pass before one byte of it reaches grainmgr (one rule
per `ArchiveRefusalReason` in backup.proto), and the confinement of the process that applies
them.
Trusts: nothing in the archive. Its parent (the backup service) for the limits on argv.
Never: writes a file, opens a network socket, follows an entry name onto the filesystem, or
extracts anything: entries are read as streams, hashed, and either thrown away or (stream
mode) handed to the parent through stdout.

Run as `python -m grainhouse_backup.validator --limits JSON` with the archive open read-only
on stdin (a regular file, so the central directory can be read) and the verdict written to
stdout. Before it reads a byte it confines itself (see `confine`): new user and network
namespaces (no network at all), chroot into an empty directory when it can, no new
privileges, and rlimits on address space, CPU, file size and open files. The parent never
forks itself (gRPC threads): it starts this as a fresh interpreter.

Stream mode (`--stream`, used by restores; `Checked` is the parent's side): the archive is
read once. stdout carries frames (`kind` byte, 4-byte big-endian length, payload): `M` the
metadata entry, sent only once every check that needs no content passed (names, types,
structure, sizes, metadata, the file list against the entries); then `D` frames, the content
of each listed regular file in list order (at most CHUNK bytes each, never spanning two
files), each checked (size, inflation, CRC) before it is sent; finally one `V`, the verdict
(JSON). A file's SHA-256 is only known after its last `D`, so the parent must treat content
as unvalidated until `V` says ok: a restore streams it into grainmgr's import (a staging
directory) and sends the import's trailer, which alone creates the grain, only then. A
refusal, a crash or a timeout cancels the import: no grain, nothing left.

`check_archive` is the pure rule set, also called directly by unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import itertools
import json
import logging
import os
import posixpath
import re
import resource
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import IO, Any, Protocol

from grainhouse_backup import archive

# Names of ArchiveRefusalReason values (backup.proto), without the prefix.
ZIP_SLIP = "ZIP_SLIP"
ABSOLUTE_PATH = "ABSOLUTE_PATH"
SYMLINK = "SYMLINK"
HARD_LINK = "HARD_LINK"
DEVICE_FILE = "DEVICE_FILE"
DUPLICATE_NAME = "DUPLICATE_NAME"
SIZE_BOMB = "SIZE_BOMB"
RATIO_BOMB = "RATIO_BOMB"
TOO_MANY_FILES = "TOO_MANY_FILES"
TRUNCATED_OR_CORRUPT = "TRUNCATED_OR_CORRUPT"
CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
BAD_METADATA = "BAD_METADATA"
BAD_NAME = "BAD_NAME"
# Reasons decided outside this process (they need grainmgr, or come before the upload ends).
APP_NOT_INSTALLED = "APP_NOT_INSTALLED"
APP_TOO_OLD = "APP_TOO_OLD"
ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"

log = logging.getLogger("grainhouse.backup.validator")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1
_LOCAL_HEADER = 30
RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 10 * 1024**3
    max_ratio: int = 200
    max_files: int = 1_000_000
    # Confinement of the validator process itself.
    max_memory_bytes: int = 1024 * 1024**2
    max_cpu_seconds: int = 600


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    message: str = ""
    entry: str = ""
    file_count: int = 0
    total_bytes: int = 0
    confinement: tuple[str, ...] = ()  # steps the validator process applied to itself


class Refusal(Exception):
    def __init__(self, reason: str, message: str, entry: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.entry = entry


def shown(name: str) -> str:
    """An untrusted entry name made safe for a message: escaped, at most 512 chars."""
    text = name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:512]


def _raw_name(info: zipfile.ZipInfo) -> str:
    """The entry name as UTF-8, or BAD_NAME.

    zipfile decodes names without the UTF-8 flag as cp437; Info-ZIP on Unix writes raw UTF-8
    without the flag, so such names are re-encoded to their bytes and decoded as UTF-8.
    """
    name = info.filename
    if not info.flag_bits & _UTF8_FLAG and not name.isascii():
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError) as exc:
            raise Refusal(BAD_NAME, "an entry name is not valid UTF-8", shown(name)) from exc
    return name


def _check_name(name: str) -> str:
    """Refuse a hostile name; return it normalised ("a//b/./c" -> "a/b/c")."""
    if _CONTROL.search(name):
        raise Refusal(BAD_NAME, "an entry name contains a control character", shown(name))
    if len(name.encode()) > 4096:
        raise Refusal(BAD_NAME, "an entry name is longer than 4096 bytes", shown(name))
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise Refusal(ABSOLUTE_PATH, "an entry name is an absolute path", shown(name))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(len(p.encode()) > 255 for p in parts):
        raise Refusal(BAD_NAME, "an entry name has a component longer than 255 bytes", shown(name))
    if ".." in parts:
        # Even "data/a/../b", which stays inside, is refused: we never write "..", and a name
        # with it can alias another entry or leave data/ ("data/../x").
        raise Refusal(ZIP_SLIP, "an entry name climbs out with '..'", shown(name))
    return "/".join(parts)


def _kind(info: zipfile.ZipInfo, name: str) -> str:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    fmt = stat.S_IFMT(mode)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        raise Refusal(DEVICE_FILE, "an entry is a device, fifo or socket", shown(name))
    if fmt == stat.S_IFLNK:
        return archive.SYMLINK
    if fmt == stat.S_IFDIR or name.endswith("/"):
        return archive.DIRECTORY
    if fmt not in (0, stat.S_IFREG):
        raise Refusal(DEVICE_FILE, "an entry has an unknown file type", shown(name))
    return archive.REGULAR


def _check_structure(infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    """Hard links (two names, one body) and overlapping or out-of-file entries."""
    by_offset = sorted(infos, key=lambda i: i.header_offset)
    for prev, cur in itertools.pairwise(by_offset):
        if prev.header_offset == cur.header_offset:
            raise Refusal(
                HARD_LINK, "two entries share one body (a hard link)", shown(cur.filename)
            )
        encoding = "utf-8" if prev.flag_bits & _UTF8_FLAG else "cp437"
        name_len = len(prev.orig_filename.encode(encoding, "replace"))
        # A lower bound of the entry's end (the local extra field is not counted).
        prev_end = prev.header_offset + _LOCAL_HEADER + name_len + prev.compress_size
        if prev_end > cur.header_offset:
            raise Refusal(TRUNCATED_OR_CORRUPT, "archive entries overlap", shown(cur.filename))
    for info in infos:
        if info.header_offset + info.compress_size > archive_size:
            raise Refusal(
                TRUNCATED_OR_CORRUPT,
                "an entry reaches past the end of the archive",
                shown(info.filename),
            )


def _symlink_escapes(path: str, target: str) -> bool:
    if target.startswith("/") or not target or "\x00" in target:
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


class Sink(Protocol):
    """Where stream mode sends what it read (see the module docstring)."""

    def metadata(self, raw: bytes) -> None: ...

    def data(self, chunk: bytes | memoryview) -> None:
        """One piece of content; a view is only valid during the call (copy to keep it)."""


def check_archive(fileobj: IO[bytes], limits: Limits, sink: Sink | None = None) -> Verdict:
    """Apply every rule; refuse on the first broken one. With a sink, also hand it the
    metadata (once the checks before content passed) and every regular file's content."""
    try:
        return _check(fileobj, limits, sink)
    except Refusal as r:
        return Verdict(False, r.reason, r.message, r.entry)


def _open(fileobj: IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise Refusal(TRUNCATED_OR_CORRUPT, "not a ZIP archive, or cut short") from exc


def _check(fileobj: IO[bytes], limits: Limits, sink: Sink | None) -> Verdict:
    fileobj.seek(0, os.SEEK_END)
    archive_size = fileobj.tell()
    fileobj.seek(0)
    zf = _open(fileobj)
    infos = zf.infolist()
    if len(infos) > limits.max_files + 1:
        raise Refusal(TOO_MANY_FILES, f"the archive holds more than {limits.max_files} entries")

    entries: dict[str, tuple[str, zipfile.ZipInfo]] = {}
    declared_total = 0
    for info in infos:
        raw = _raw_name(info)
        name = _check_name(raw)
        kind = _kind(info, raw)
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise Refusal(TRUNCATED_OR_CORRUPT, "an entry is encrypted", shown(raw))
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refusal(
                TRUNCATED_OR_CORRUPT, "an entry uses an unsupported compression method", shown(raw)
            )
        if name in entries:
            raise Refusal(DUPLICATE_NAME, "two entries have the same name", shown(raw))
        entries[name] = (kind, info)
        declared_total += info.file_size
        if declared_total > limits.max_total_bytes:
            raise Refusal(
                SIZE_BOMB,
                f"the archive expands to more than {limits.max_total_bytes} bytes",
                shown(raw),
            )
        if info.file_size > RATIO_MIN_BYTES and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise Refusal(
                RATIO_BOMB,
                f"an entry's compression ratio exceeds {limits.max_ratio}:1",
                shown(raw),
            )
    _check_structure(infos, archive_size)

    # A file and a directory (or a file used as a directory) with one name.
    dirs = {n for n, (k, _) in entries.items() if k == archive.DIRECTORY}
    files = {n for n, (k, _) in entries.items() if k != archive.DIRECTORY}
    if clash := dirs & files:
        raise Refusal(
            DUPLICATE_NAME, "a file and a directory have the same name", shown(min(clash))
        )
    links = {n for n, (k, _) in entries.items() if k == archive.SYMLINK}
    for name in entries:
        parent = posixpath.dirname(name)
        while parent:
            if parent in links:
                raise Refusal(SYMLINK, "an entry's path passes through a symlink", shown(name))
            if parent in files:
                raise Refusal(DUPLICATE_NAME, "an entry's parent is a file", shown(name))
            parent = posixpath.dirname(parent)

    try:
        raw_meta = archive.read_metadata_raw(zf)
        meta = archive.parse_metadata(raw_meta)
    except archive.MetadataError as exc:
        raise Refusal(BAD_METADATA, str(exc)) from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise Refusal(TRUNCATED_OR_CORRUPT, "the metadata entry is corrupt") from exc

    listed = {r.path: r for r in meta.files}
    if len(listed) != len(meta.files):
        raise Refusal(BAD_METADATA, "the metadata lists a file twice")
    seen_dirs = {""}
    for record in meta.files:  # restore streams in this order: a directory before its contents
        if posixpath.dirname(record.path) not in seen_dirs:
            raise Refusal(
                BAD_METADATA, "the metadata lists an entry before its directory",
                shown(archive.DATA_PREFIX + record.path),
            )  # fmt: skip
        if record.type == archive.DIRECTORY:
            seen_dirs.add(record.path)
    present = {
        n[len(archive.DATA_PREFIX) :]: v
        for n, v in entries.items()
        if n.startswith(archive.DATA_PREFIX)
    }
    known = {archive.METADATA_NAME, archive.DATA_PREFIX.rstrip("/")}
    extra = set(entries) - known - {archive.DATA_PREFIX + p for p in present}
    if extra:
        raise Refusal(CHECKSUM_MISMATCH, "an entry is outside data/", shown(min(extra)))
    if missing := set(listed) - set(present):
        raise Refusal(
            CHECKSUM_MISMATCH, "a listed file is missing", shown(archive.DATA_PREFIX + min(missing))
        )
    if unlisted := set(present) - set(listed):
        raise Refusal(
            CHECKSUM_MISMATCH,
            "a file is not in the checksum list",
            shown(archive.DATA_PREFIX + min(unlisted)),
        )
    if sink is not None:
        sink.metadata(raw_meta)
        del raw_meta

    total = 0
    buf = memoryview(bytearray(archive.CHUNK))  # what every entry is read into (see _stream)
    for path, record in listed.items():
        kind, info = present[path]
        name = info.filename
        if kind != record.type:
            raise Refusal(CHECKSUM_MISMATCH, "an entry's type disagrees with the list", shown(name))
        if kind == archive.SYMLINK:
            target = _read_all(fileobj, info, 4096, name)
            if _symlink_escapes(path, target.decode("utf-8", "replace")) or (
                record.target and target.decode("utf-8", "replace") != record.target
            ):
                raise Refusal(SYMLINK, "a symlink points outside the grain's data", shown(name))
            continue
        if kind != archive.REGULAR:
            continue
        if info.file_size != record.size:
            raise Refusal(CHECKSUM_MISMATCH, "an entry's size disagrees with the list", shown(name))
        digest = hashlib.sha256()
        for chunk in _stream(fileobj, info, name, buf):
            total += len(chunk)
            if total > limits.max_total_bytes:
                raise Refusal(SIZE_BOMB, "the archive expands past the limit", shown(name))
            digest.update(chunk)
            if sink is not None:
                sink.data(chunk)
        if digest.hexdigest() != record.sha256:
            raise Refusal(
                CHECKSUM_MISMATCH, "an entry's content does not match its checksum", shown(name)
            )
    return Verdict(True, file_count=len(listed), total_bytes=total)


def _stream(
    src: IO[bytes], info: zipfile.ZipInfo, path: str, buf: memoryview | None = None
) -> Iterable[bytes | memoryview]:
    """An entry's content, decompressed here (not by zipfile) so that an entry producing more
    than it declared is caught as it happens, memory stays bounded and the CRC is checked.

    The archive is read into `buf` (at least CHUNK bytes; one per archive, not one per chunk:
    fresh memory is what copies cost most here). What is yielded may be a view of it, valid
    until the next item is asked for."""
    src.seek(info.header_offset)
    local = src.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise Refusal(TRUNCATED_OR_CORRUPT, "an entry's local header is missing", shown(path))
    skip = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    src.seek(skip, os.SEEK_CUR)
    left = info.compress_size
    deflate = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    crc = 0
    got = 0
    if buf is None:
        buf = memoryview(bytearray(min(left, archive.CHUNK)))
    while left > 0:
        n = src.readinto(buf[: min(left, archive.CHUNK)])  # type: ignore[attr-defined]
        if not n:
            raise Refusal(TRUNCATED_OR_CORRUPT, "an entry is cut short", shown(path))
        left -= n
        raw: bytes | memoryview = buf[:n]
        while raw:
            if deflate is None:
                out, raw = raw, b""
            else:
                try:
                    out = deflate.decompress(raw, archive.CHUNK)
                except zlib.error as exc:
                    raise Refusal(
                        TRUNCATED_OR_CORRUPT, "an entry is corrupt (bad deflate data)", shown(path)
                    ) from exc
                raw = deflate.unconsumed_tail
            got += len(out)
            if got > info.file_size:
                raise Refusal(SIZE_BOMB, "an entry is larger than it declared", shown(path))
            crc = zlib.crc32(out, crc)
            if out:
                yield out
    if got != info.file_size or (deflate is not None and not deflate.eof):
        raise Refusal(TRUNCATED_OR_CORRUPT, "an entry is cut short", shown(path))
    if crc != info.CRC:
        raise Refusal(TRUNCATED_OR_CORRUPT, "an entry is corrupt (CRC error)", shown(path))


def _read_all(src: IO[bytes], info: zipfile.ZipInfo, cap: int, path: str) -> bytes:
    if info.file_size > cap:
        raise Refusal(SYMLINK, "a symlink target is too long", shown(path))
    return b"".join(bytes(chunk) for chunk in _stream(src, info, path))


# ---- confinement ----------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38


def confine(limits: Limits, empty_dir: str | None) -> list[str]:
    """Confine this process before it reads the archive; returns what could be applied.

    Each step is best effort on kernels that forbid it (unprivileged user namespaces may be
    off), and the list of applied steps goes into the verdict so tests can assert on it.
    """
    applied = []
    # Codecs load lazily from the encodings package: load the ones we use before the chroot.
    "x".encode("unicode_escape").decode("ascii")
    "x".encode("cp437").decode("cp437")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        applied.append("no_new_privs")
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) == 0:
        applied.append("netns")
        if empty_dir and os.path.isdir(empty_dir):
            try:
                os.chroot(empty_dir)
                os.chdir("/")
                applied.append("chroot")
            except OSError:
                pass
    # No file is opened for writing; the cap keeps even stdout (if a file) to a verdict.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.max_cpu_seconds, limits.max_cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.max_memory_bytes, limits.max_memory_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))
    applied.append("rlimits")
    return applied


async def validate_file(path: str, limits: Limits, empty_dir: str, timeout: float) -> Verdict:
    """Run the validator on one archive in its own confined interpreter; return its verdict.

    The archive is the child's stdin, opened read-only here; the child gets no other file,
    an empty environment and no network. A crash, a kill by rlimit or a timeout is a refusal
    (never an acceptance).
    """
    with open(path, "rb") as source:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "grainhouse_backup.validator",
            "--limits", json.dumps(asdict(limits)), "--empty-dir", empty_dir,
            stdin=source, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
        )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive took too long to check")
    try:
        doc = json.loads(out)
        doc["confinement"] = tuple(doc.get("confinement", ()))
        return Verdict(**doc)
    except (ValueError, TypeError):
        log.warning("validator died (exit %s): %s", proc.returncode, err[-500:])
        return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")


# ---- stream mode ----------------------------------------------------------------------------

FRAME = struct.Struct(">cI")  # kind, payload length
METADATA_FRAME, DATA_FRAME, VERDICT_FRAME = b"M", b"D", b"V"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux)
PIPE_SIZE = 1024 * 1024  # the default /proc/sys/fs/pipe-max-size
# The largest metadata and verdict frames the parent reads (data frames: what the file lacks).
_MOST = {METADATA_FRAME: archive.MAX_METADATA_BYTES, VERDICT_FRAME: 1024 * 1024}


class FrameSink:
    """The validator's side of stream mode: frames written straight to a (blocking) pipe fd,
    header and payload in one writev: no copy into a userspace buffer on the way."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _frame(self, kind: bytes, payload: bytes | memoryview) -> None:
        size = len(payload)
        done = os.writev(self.fd, [FRAME.pack(kind, size), payload])
        while done < FRAME.size + size:  # a signal cut the write short: finish it
            if done < FRAME.size:
                done += os.write(self.fd, FRAME.pack(kind, size)[done:])
            else:
                done += os.write(self.fd, memoryview(payload)[done - FRAME.size :])

    def metadata(self, raw: bytes) -> None:
        self._frame(METADATA_FRAME, raw)

    def data(self, chunk: bytes | memoryview) -> None:
        self._frame(DATA_FRAME, chunk)

    def verdict(self, doc: dict[str, Any]) -> None:
        self._frame(VERDICT_FRAME, json.dumps(doc).encode())


class PipeReader:
    """Exact-size reads from a pipe on the running event loop, each payload in one copy.

    asyncio's StreamReader copies every byte three times (the transport's read, its buffer,
    the slice handed out); here a payload that is already in the pipe is one os.read, and
    the loop is only asked to wait (add_reader) when the pipe is empty.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)

    async def read_exactly(self, size: int) -> bytes:
        """`size` bytes; EOFError if the writer closed before (a dead validator)."""
        parts: list[bytes] = []
        left = size
        while left > 0:
            try:
                got = os.read(self.fd, min(left, PIPE_SIZE))
            except BlockingIOError:
                await self._readable()
                continue
            if not got:
                raise EOFError
            parts.append(got)
            left -= len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Checked:
    """The parent's side of stream mode: one running validator and its frames.

    Usage: `start`, then `metadata()` (raw metadata, or the refusal), then `data(n)` for each
    listed regular file in order, then `verdict()`; `close()` always (kills a validator still
    running). Anything unexpected from the child (a crash, a cut stream, a frame out of
    place) is a refusal, never an acceptance.
    """

    def __init__(self, proc: asyncio.subprocess.Process, frames: PipeReader) -> None:
        self.proc = proc
        self.frames = frames
        self.refusal: Verdict | None = None

    @classmethod
    async def start(cls, path: str, limits: Limits, empty_dir: str) -> Checked:
        # Our own pipe (both ends close-on-exec here; the child gets the write end as fd 1).
        read_end, write_end = os.pipe()
        try:
            with contextlib.suppress(OSError):  # fewer, larger hand-overs
                fcntl.fcntl(read_end, F_SETPIPE_SZ, PIPE_SIZE)
            with open(path, "rb") as source:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-m", "grainhouse_backup.validator", "--stream",
                    "--limits", json.dumps(asdict(limits)), "--empty-dir", empty_dir,
                    stdin=source, stdout=write_end, stderr=asyncio.subprocess.DEVNULL,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
                )  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # else the pipe never ends when the child does
        return cls(proc, PipeReader(read_end))

    async def _frame(self, most: int = 0) -> tuple[bytes, bytes]:
        """The next frame; a data frame may carry at most `most` bytes. A frame larger than
        its kind allows is never read into memory: it comes back as an unknown kind."""
        try:
            kind, size = FRAME.unpack(await self.frames.read_exactly(FRAME.size))
            if size > (most if kind == DATA_FRAME else _MOST.get(kind, 0)):
                return b"?", b""
            return kind, await self.frames.read_exactly(size)
        except (EOFError, struct.error):
            await self.proc.wait()
            log.warning("validator died (exit %s)", self.proc.returncode)
            return VERDICT_FRAME, b""

    def _refused(self, payload: bytes) -> Verdict:
        try:
            doc = json.loads(payload)
            doc["confinement"] = tuple(doc.get("confinement", ()))
            verdict = Verdict(**doc)
        except (ValueError, TypeError):
            verdict = Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")
        if verdict.ok:  # an acceptance before the content went by is not one
            verdict = Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")
        return verdict

    async def metadata(self) -> bytes | Verdict:
        """The metadata entry's bytes once the checks before content passed, or the refusal."""
        kind, payload = await self._frame()
        if kind == METADATA_FRAME:
            return payload
        return self._refused(payload)

    async def data(self, most: int) -> bytes | Verdict:
        """The next piece (at most `most` bytes) of the current file, or the refusal."""
        most = min(most, archive.CHUNK)  # the validator never sends more in one frame
        kind, payload = await self._frame(most)
        if kind == DATA_FRAME and 0 < len(payload) <= most:
            return payload
        return self._refused(payload if kind == VERDICT_FRAME else b"")

    async def verdict(self) -> Verdict:
        """The final verdict, once every listed file's content went by."""
        kind, payload = await self._frame()
        if kind != VERDICT_FRAME:
            return self._refused(b"")
        try:
            doc = json.loads(payload)
            doc["confinement"] = tuple(doc.get("confinement", ()))
            return Verdict(**doc)
        except (ValueError, TypeError):
            return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.frames.close()
        await self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grainhouse_backup.validator")
    parser.add_argument("--limits", default="{}")
    parser.add_argument("--empty-dir", default=None)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    limits = Limits(**json.loads(args.limits))
    out = sys.stdout
    applied = confine(limits, args.empty_dir)
    source = os.fdopen(0, "rb", buffering=0)
    sink = None
    if args.stream:
        with contextlib.suppress(OSError):  # fewer, larger hand-overs to the parent
            fcntl.fcntl(1, F_SETPIPE_SZ, PIPE_SIZE)
        sink = FrameSink(1)
    try:
        verdict = check_archive(source, limits, sink)
    except MemoryError:
        verdict = Verdict(False, SIZE_BOMB, "the archive needs too much memory to check")
    doc: dict[str, Any] = asdict(verdict)
    doc["confinement"] = list(applied)
    if sink is not None:
        sink.verdict(doc)
        return 0
    out.write(json.dumps(doc))
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
