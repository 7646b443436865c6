"""The rules an uploaded archive must pass before one byte of it reaches grainmgr.

One rule per `ArchiveRefusalReason` in backup.proto; `check_archive` applies them all and
refuses on the first broken one. Called in the confined validator process (validator.py) and
directly by unit tests.

Owns: the rule set and the bounded, CRC-checked reading of an entry's content.
Trusts: nothing in the archive; its caller for the `Limits`.
Never: writes a file, opens a network socket, follows an entry name onto the filesystem, or
extracts anything: entries are read as streams, hashed, and either thrown away or (stream
mode) handed to the `Sink`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable
from typing import IO, Protocol

from grainhouse_backup import archive
from grainhouse_backup.verdicts import (
    ABSOLUTE_PATH,
    BAD_METADATA,
    BAD_NAME,
    CHECKSUM_MISMATCH,
    DEVICE_FILE,
    DUPLICATE_NAME,
    HARD_LINK,
    RATIO_BOMB,
    SIZE_BOMB,
    SYMLINK,
    TOO_MANY_FILES,
    TRUNCATED_OR_CORRUPT,
    ZIP_SLIP,
    Limits,
    Refusal,
    Verdict,
    shown,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1
_LOCAL_HEADER = 30
RATIO_MIN_BYTES = 1024 * 1024


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
        n = src.readinto(buf[: min(left, archive.CHUNK)])  # type: ignore[attr-defined]  # IO lacks it; our files have it
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
