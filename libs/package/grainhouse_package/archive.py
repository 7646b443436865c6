"""The package payload: an xz-compressed tar of the manifest and the app's files.

Owns: the payload layout (first entry ``grainhouse.json``, then only ``files`` and
``files/...``), writing it from a directory, and reading it as a stream under `Caps`.
Trusts: nothing in a payload; on the writing side, the author's directory (checked anyway).
Never: follows a symlink when packing; trusts a declared size; writes to disk when reading
(the caller's `EntrySink` decides what to do with each entry); imports a service.

Why tar + xz and not zip: tar can be read front to back as a stream, so every check (names,
types, modes, duplicates, byte counts) happens before anything after it is even decompressed,
and no central directory can disagree with the local headers. The xz decoder is run by hand so
that its memory is capped and every decompressed byte is counted.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from grainhouse_package.caps import Caps
from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import Manifest, is_clean_relative_path, parse_manifest

MANIFEST_NAME = "grainhouse.json"
#: xz preset: 6 packs a 27 MB Python stack to 5.6 MB in ~10 s; 1 gives 6.3 MB in ~3 s.
DEFAULT_LEVEL = 6
FILES_DIR = "files"
_CHUNK = 64 * 1024
_MAX_NAME_COMPONENT = 255
#: pax and GNU long-name headers are read whole into memory by tarfile; keep them small.
_MAX_META_HEADER = 64 * 1024
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_FORBIDDEN_BITS = ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"), (stat.S_ISVTX, "sticky"))


class EntrySink(Protocol):
    """Receives each validated entry, in archive order; unpack writes them, verify drops them."""

    def directory(self, path: str) -> None: ...

    def file(self, path: str, executable: bool, chunks: Iterator[bytes]) -> None:
        """Must consume `chunks` fully; the byte caps are enforced while it is iterated."""

    def symlink(self, path: str, target: str) -> None: ...


class DiscardSink:
    """An `EntrySink` that reads everything (so every cap is checked) and keeps nothing."""

    def directory(self, path: str) -> None:
        pass

    def file(self, path: str, executable: bool, chunks: Iterator[bytes]) -> None:
        for _ in chunks:
            pass

    def symlink(self, path: str, target: str) -> None:
        pass


@dataclass
class PayloadSummary:
    """What a full, successful read of a payload found."""

    manifest: Manifest
    manifest_bytes: bytes
    entries: int = 0
    unpacked_bytes: int = 0
    files: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- writing


def write_payload(
    manifest_bytes: bytes, files_root: Path, out: BinaryIO, level: int = DEFAULT_LEVEL
) -> None:
    """Write the payload for `files_root` (minus its top-level grainhouse.json) to `out`.

    Refuses (PackageError "invalid") symlinks leading outside `files_root`, device files, FIFOs,
    sockets and setuid/setgid/sticky bits. Output is reproducible: sorted names, zero
    timestamps and owners, so the same tree packs to the same bytes.
    """
    root = files_root.resolve()
    entries = list(_walk(root, root))
    with (
        lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, preset=level) as xz,
        tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_bytes(tar, MANIFEST_NAME, manifest_bytes)
        tar.addfile(_tarinfo(FILES_DIR, tarfile.DIRTYPE, 0o755))
        for rel, st, link in entries:
            name = f"{FILES_DIR}/{rel}"
            if link is not None:
                info = _tarinfo(name, tarfile.SYMTYPE, 0o777)
                info.linkname = link
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                tar.addfile(_tarinfo(name, tarfile.DIRTYPE, 0o755))
            else:
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                info = _tarinfo(name, tarfile.REGTYPE, mode)
                # O_NOFOLLOW: the tree may have changed between the walk and this read.
                fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as src:
                    st_now = os.fstat(src.fileno())
                    if not stat.S_ISREG(st_now.st_mode) or st_now.st_mode & 0o7000:
                        raise PackageError("invalid", f"{rel}: changed while being packed")
                    info.size = st_now.st_size
                    tar.addfile(info, src)


def _walk(root: Path, here: Path) -> Iterator[tuple[str, os.stat_result, str | None]]:
    """Yield (relative path, lstat, symlink target or None) in sorted, parents-first order."""
    try:
        names = sorted(os.listdir(here))
    except OSError as exc:
        raise PackageError("invalid", f"cannot read directory {here}: {exc.strerror}") from exc
    for name in names:
        path = here / name
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue  # stored separately, as the first entry
        if not is_clean_relative_path(rel):
            raise PackageError("invalid", f"{rel!r}: file name not allowed in a package")
        st = os.lstat(path)
        mode = st.st_mode
        for bit, label in _FORBIDDEN_BITS:
            if mode & bit:
                raise PackageError("invalid", f"{rel}: has the {label} bit; refusing to pack it")
        if stat.S_ISLNK(mode):
            yield rel, st, _checked_link(root, path, rel)
        elif stat.S_ISDIR(mode):
            yield rel, st, None
            yield from _walk(root, path)
        elif stat.S_ISREG(mode):
            yield rel, st, None
        else:
            raise PackageError("invalid", f"{rel}: is a {_kind(mode)}; only files are packed")


def _checked_link(root: Path, path: Path, rel: str) -> str:
    target = os.readlink(path)
    if os.path.isabs(target):
        raise PackageError("invalid", f"{rel}: symlink to absolute path {target!r} is outside DIR")
    resolved = Path(os.path.realpath(path))
    if resolved != root and root not in resolved.parents:
        raise PackageError("invalid", f"{rel}: symlink points outside DIR (to {target!r})")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if lexical == ".." or lexical.startswith("../"):
        raise PackageError("invalid", f"{rel}: symlink points outside DIR (to {target!r})")
    return target


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _tarinfo(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _tarinfo(name, tarfile.REGTYPE, 0o644)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------- reading


def read_payload(
    raw: IO[bytes], payload_len: int, caps: Caps, sink: EntrySink, digest: Any
) -> PayloadSummary:
    """Stream-read `payload_len` bytes of `raw` as a payload, feeding each entry to `sink`.

    `digest` (a hashlib object) is updated with every raw payload byte, so the caller can
    check that what was parsed is what was signed. Raises PackageError on the first problem.
    """
    source = _XzReader(raw, payload_len, caps, digest)
    try:
        # No BufferedReader in between: bytes read ahead past the end-of-archive mark would
        # escape the trailing-data check in `finish`.
        tar = tarfile.open(  # noqa: SIM115 - closed by the `with tar` below
            fileobj=source, mode="r|", tarinfo=_StrictTarInfo
        )
    except tarfile.ReadError as exc:
        raise PackageError("invalid", f"corrupt archive: {exc}") from exc
    reader = _PayloadReader(caps, sink)
    try:
        with tar:
            for member in tar:
                reader.entry(tar, member)
            # tarfile's stream keeps the rest of its current record; it must be padding too.
            # (`buf` is private but has been _Stream's read buffer since Python 2.)
            if any(getattr(tar.fileobj, "buf", b"")):
                raise PackageError("invalid", "corrupt archive: data after the end-of-archive mark")
    except tarfile.TarError as exc:
        raise PackageError("invalid", f"corrupt archive: {exc}") from exc
    except EOFError as exc:
        raise PackageError("invalid", f"truncated archive: {exc}") from exc
    source.finish()
    return reader.finish()


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized metadata headers before tarfile reads them into memory."""

    # _proc_member is private, but it is the only hook that runs before tarfile reads a pax or
    # GNU long-name header whole into memory; stable since Python 2.6.
    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise PackageError("invalid", f"{self.name!r}: sparse files are not allowed")
        if self.type in _META_TYPES and self.size > _MAX_META_HEADER:
            raise PackageError(
                "invalid", f"archive metadata header of {self.size} bytes is too large"
            )
        result: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]  # private: not in typeshed
        return result


class _XzReader(io.RawIOBase):
    """Reads exactly `payload_len` raw bytes, hashes them, and decompresses xz under caps."""

    def __init__(self, raw: IO[bytes], payload_len: int, caps: Caps, digest: Any) -> None:
        super().__init__()
        self._raw = raw
        self._left = payload_len
        self._payload_len = payload_len
        self._caps = caps
        self._digest = digest
        self._limit = caps.max_stream_bytes()
        self._out = 0
        self._dec = lzma.LZMADecompressor(
            format=lzma.FORMAT_XZ, memlimit=caps.max_decoder_memory_bytes
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._dec.eof:
            # needs_input is False when the last call stopped at max_length with input left.
            chunk = self._next_raw() if self._dec.needs_input else b""
            try:
                data = self._dec.decompress(chunk, max_length=len(view))
            except lzma.LZMAError as exc:
                raise PackageError("invalid", f"corrupt compressed data: {exc}") from exc
            if data:
                self._count(len(data))
                view[: len(data)] = data
                return len(data)
            if not chunk and self._left == 0 and self._dec.needs_input:
                raise PackageError("invalid", "truncated archive: compressed data ends early")
        return 0

    def _next_raw(self) -> bytes:
        if self._left == 0:
            return b""
        chunk = self._raw.read(min(_CHUNK, self._left))
        if not chunk:
            raise PackageError("invalid", "truncated package: payload ends early")
        self._left -= len(chunk)
        self._digest.update(chunk)
        return chunk

    def _count(self, n: int) -> None:
        self._out += n
        if self._out > self._limit:
            raise PackageError(
                "too_large", f"archive expands past {self._limit} bytes (compression bomb)"
            )
        caps = self._caps
        consumed = max(self._payload_len - self._left, 1)
        if (
            self._out > caps.expansion_check_after_bytes
            and self._out > caps.max_expansion_ratio * consumed
        ):
            raise PackageError(
                "too_large",
                f"compression bomb: {consumed} compressed bytes expand to more than "
                f"{self._out} bytes (ratio above {caps.max_expansion_ratio})",
            )

    def finish(self) -> None:
        """After the tar end marker: only zero padding may remain, then the xz end, then EOF."""
        buf = bytearray(_CHUNK)
        while True:
            n = self.readinto(buf)
            if n == 0:
                break
            if any(buf[:n]):
                raise PackageError("invalid", "corrupt archive: data after the end-of-archive mark")
        if not self._dec.eof:
            raise PackageError("invalid", "truncated archive: compressed stream is incomplete")
        if self._dec.unused_data or self._left:
            # Consume the rest so the caller's digest still covers the whole payload.
            while self._left:
                self._next_raw()
            raise PackageError("invalid", "corrupt archive: data after the compressed stream")


class _PayloadReader:
    """Validates tar members one by one and hands the good ones to the sink."""

    def __init__(self, caps: Caps, sink: EntrySink) -> None:
        self.caps = caps
        self.sink = sink
        self.manifest: Manifest | None = None
        self.manifest_bytes = b""
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.entries = 0
        self.bytes = 0

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if self.manifest is None:
            self._manifest_entry(tar, m)
            return
        name = m.name
        self.entries += 1
        if self.entries > self.caps.max_entries:
            raise PackageError(
                "too_large", f"archive has more than {self.caps.max_entries} entries"
            )
        self._check_name(name)
        if name in self.kinds:
            raise PackageError("invalid", f"{name!r}: duplicate entry name")
        self._check_parents(name)
        self._check_type_and_mode(m)
        if m.isdir():
            self.kinds[name] = "dir"
            self.sink.directory(name)
        elif m.issym():
            self._check_link_target(name, m.linkname)
            self.kinds[name] = "symlink"
            self.links[name] = m.linkname
            self.sink.symlink(name, m.linkname)
        else:
            self.kinds[name] = "file"
            fileobj = tar.extractfile(m)
            if fileobj is None:  # pragma: no cover - isreg() members always have data
                raise PackageError("invalid", f"{name!r}: file without data")
            self.sink.file(name, bool(m.mode & 0o100), self._chunks(fileobj))

    def _manifest_entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if m.name != MANIFEST_NAME or not m.isreg():
            raise PackageError(
                "invalid", f"the first archive entry must be the file {MANIFEST_NAME}"
            )
        cap = self.caps.max_manifest_bytes
        if m.size > cap:
            raise PackageError("too_large", f"manifest is {m.size} bytes; the cap is {cap}")
        fileobj = tar.extractfile(m)
        data = fileobj.read(cap + 1) if fileobj is not None else b""
        self.manifest = parse_manifest(data, cap)
        self.manifest_bytes = data

    def _chunks(self, fileobj: IO[bytes]) -> Iterator[bytes]:
        while True:
            chunk = fileobj.read(_CHUNK)
            if not chunk:
                return
            self.bytes += len(chunk)
            if self.bytes > self.caps.max_unpacked_bytes:
                raise PackageError(
                    "too_large",
                    f"files total more than the cap of {self.caps.max_unpacked_bytes} bytes",
                )
            yield chunk

    def _check_name(self, name: str) -> None:
        if name.startswith("/"):
            raise PackageError("invalid", f"{name[:200]!r}: absolute path in archive")
        parts = name.split("/")
        if ".." in parts:
            raise PackageError("invalid", f"{name[:200]!r}: path traversal ('..') in archive")
        if parts[0] != FILES_DIR:
            raise PackageError("invalid", f"{name[:200]!r}: entry outside files/ in archive")
        if len(name.encode("utf-8", "surrogateescape")) > self.caps.max_path_bytes:
            raise PackageError("invalid", f"{name[:200]!r}: path longer than the cap")
        if len(parts) > self.caps.max_depth + 1:
            raise PackageError("invalid", f"{name[:200]!r}: deeper than {self.caps.max_depth}")
        if name != FILES_DIR and not is_clean_relative_path(name):
            raise PackageError("invalid", f"{name[:200]!r}: malformed path in archive")
        if any(len(p.encode("utf-8", "surrogateescape")) > _MAX_NAME_COMPONENT for p in parts):
            raise PackageError("invalid", f"{name[:200]!r}: a path component is too long")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PackageError("invalid", f"{name[:200]!r}: path is not UTF-8") from exc

    def _check_parents(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind is not None and kind != "dir":
                raise PackageError(
                    "invalid", f"{name!r}: path passes through the {kind} {parent!r}"
                )

    def _check_type_and_mode(self, m: tarfile.TarInfo) -> None:
        name = m.name
        if m.islnk():
            target = posixpath.normpath(m.linkname)
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise PackageError("invalid", f"{name!r}: hard link points outside the package")
            raise PackageError("invalid", f"{name!r}: hard links are not allowed")
        if m.ischr() or m.isblk():
            raise PackageError("invalid", f"{name!r}: device files are not allowed")
        if m.isfifo():
            raise PackageError("invalid", f"{name!r}: FIFOs are not allowed")
        if not (m.isdir() or m.issym() or m.type in (tarfile.REGTYPE, tarfile.AREGTYPE)):
            raise PackageError("invalid", f"{name!r}: unsupported entry type {m.type!r}")
        if name == FILES_DIR and not m.isdir():
            raise PackageError("invalid", f"{name!r}: must be a directory")
        for bit, label in _FORBIDDEN_BITS:
            if m.mode & bit:
                raise PackageError("invalid", f"{name!r}: {label} bit is not allowed")

    def _check_link_target(self, name: str, target: str) -> None:
        if not target or len(target.encode("utf-8", "surrogateescape")) > self.caps.max_path_bytes:
            raise PackageError("invalid", f"{name!r}: symlink target is empty or too long")
        if target.startswith("/"):
            raise PackageError(
                "invalid", f"{name!r}: symlink points outside the package (absolute {target!r})"
            )
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
            raise PackageError("invalid", f"{name!r}: control character in symlink target")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if resolved != FILES_DIR and not resolved.startswith(FILES_DIR + "/"):
            raise PackageError(
                "invalid", f"{name!r}: symlink points outside the package (to {target!r})"
            )

    def _check_links_do_not_chain(self) -> None:
        """A target walking through another symlink could resolve elsewhere than it reads."""
        for name, target in self.links.items():
            here = posixpath.dirname(name).split("/")
            for part in target.split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    here.pop()
                    continue
                here.append(part)
                walked = "/".join(here)
                if walked in self.links and walked != name:
                    raise PackageError(
                        "invalid", f"{name!r}: symlink target passes through symlink {walked!r}"
                    )

    def finish(self) -> PayloadSummary:
        if self.manifest is None:
            raise PackageError("invalid", f"archive is empty: missing {MANIFEST_NAME}")
        self._check_links_do_not_chain()
        files = {n for n, k in self.kinds.items() if k == "file"}
        for kind, path in self.manifest.icons.items():
            if f"{FILES_DIR}/{path}" not in files:
                raise PackageError(
                    "invalid", f"manifest.icons.{kind}: {path!r} is not a file in the package"
                )
        return PayloadSummary(
            manifest=self.manifest,
            manifest_bytes=self.manifest_bytes,
            entries=self.entries,
            unpacked_bytes=self.bytes,
            files=files,
        )


def new_digest() -> Any:
    """The hash the payload is signed under."""
    return hashlib.sha256()
