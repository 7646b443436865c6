"""Where archives live: a local directory, written atomically, optionally encrypted at rest.

Owns: `<storage_dir>/archives/` (one file per backup) and `<storage_dir>/tmp/` (archives being
written; emptied at start), and the encrypted file format below.
Trusts: backup ids to be ours (random, checked by `_path`); the key given at start.
Never: writes outside its directory; keeps a half-written archive under its final name;
returns plaintext from a frame whose tag does not verify.

Encryption at rest (when a key is configured) is AES-256-GCM in frames, so an archive is
written as a stream and any byte range can be read without decrypting the rest:
    header  = b"GHBKENC1" + nonce_prefix (4 random bytes) + frame_size (4 bytes, big endian)
    frame i = AES-GCM(key, nonce = nonce_prefix + i (8 bytes BE), plaintext[i*F:(i+1)*F],
                      aad = header + i (8 bytes BE) + final flag (1 byte)) -> ciphertext + tag
Every frame but the last holds exactly F plaintext bytes; the last has the final flag set (so
cutting the file short, reordering or dropping frames fails authentication), and may be empty.
The key is 32 bytes from a key file (raw or hex), or scrypt(passphrase, salt) with the salt kept
in `<storage_dir>/key-salt` (made once); see docs/backup.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"GHBKENC1"
HEADER_SIZE = len(MAGIC) + 4 + 4
TAG = 16
FRAME = 1024 * 1024
_ID = re.compile(r"^[a-z0-9]{16,64}$")


class StorageError(Exception):
    """The archive is missing, damaged, or could not be written."""


def key_from_file(path: Path) -> bytes:
    raw = path.read_bytes().strip()
    if len(raw) == 64:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(raw.decode("ascii"))
    if len(raw) == 32:
        return raw
    raise StorageError("the encryption key file must hold 32 bytes, raw or as 64 hex digits")


def key_from_passphrase(passphrase: str, storage_dir: Path) -> bytes:
    salt_file = storage_dir / "key-salt"
    storage_dir.mkdir(parents=True, exist_ok=True)
    if not salt_file.exists():
        tmp = storage_dir / f".key-salt.{secrets.token_hex(4)}"
        tmp.write_bytes(secrets.token_bytes(16))
        os.replace(tmp, salt_file)
    salt = salt_file.read_bytes()
    # n=2**15, r=8: ~32 MiB and ~0.1 s once per start; the passphrase is not stored.
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


@dataclass(frozen=True)
class Written:
    size_bytes: int  # plaintext archive size (what a download sends)
    sha256: str  # of the plaintext archive


class ArchiveWriter:
    """A sink for one archive: `write` in order, then `commit` (or `abort`)."""

    def __init__(self, tmp: Path, final: Path, key: bytes | None) -> None:
        self._tmp = tmp
        self._final = final
        self._file = tmp.open("xb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._aead = AESGCM(key) if key else None
        self._buf = bytearray()
        self._index = 0
        self._header = b""
        if self._aead is not None:
            self._header = MAGIC + secrets.token_bytes(4) + FRAME.to_bytes(4, "big")
            self._file.write(self._header)

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._size += len(data)
        if self._aead is None:
            self._file.write(data)
            return len(data)
        self._buf += data
        # Keep at least one byte back so the last frame (the final one) is never empty
        # unless the whole archive is.
        while len(self._buf) > FRAME:
            self._frame(bytes(self._buf[:FRAME]), final=False)
            del self._buf[:FRAME]
        return len(data)

    def flush(self) -> None:
        pass

    def _frame(self, plain: bytes, final: bool) -> None:
        assert self._aead is not None
        self._file.write(seal(self._aead, self._header, self._index, plain, final))
        self._index += 1

    def commit(self) -> Written:
        if self._aead is not None:
            self._frame(bytes(self._buf), final=True)
            self._buf.clear()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)
        return Written(self._size, self._hash.hexdigest())

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def _nonce(header: bytes, index: int) -> bytes:
    return header[len(MAGIC) : len(MAGIC) + 4] + index.to_bytes(8, "big")


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def seal(aead: AESGCM, header: bytes, index: int, plain: bytes, final: bool) -> bytes:
    return aead.encrypt(_nonce(header, index), plain, _aad(header, index, final))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Archives as files in one directory."""

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        self.root = root
        self.key = key
        self.archives = root / "archives"
        self.tmp = root / "tmp"
        self.archives.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)

    def clean_tmp(self) -> int:
        """Remove leftovers of runs that died (a crash never leaves a partial backup)."""
        count = 0
        for entry in self.tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
        return count

    def _path(self, backup_id: str) -> Path:
        if not _ID.match(backup_id):
            raise StorageError("not a backup id")
        return self.archives / f"{backup_id}.zip"

    def writer(self, backup_id: str) -> ArchiveWriter:
        final = self._path(backup_id)
        return ArchiveWriter(self.tmp / f"{backup_id}.{secrets.token_hex(4)}.part", final, self.key)

    def exists(self, backup_id: str) -> bool:
        return self._path(backup_id).exists()

    def delete(self, backup_id: str) -> bool:
        try:
            self._path(backup_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def work_dir(self) -> Path:
        """A private scratch directory under tmp/ (removed by the caller, or at next start)."""
        path = self.tmp / f"work-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        return path

    def plain_size(self, backup_id: str) -> int:
        size = self._path(backup_id).stat().st_size
        if self.key is None:
            return size
        body = size - HEADER_SIZE
        frames = -(-body // (FRAME + TAG))
        return body - frames * TAG

    def read(self, backup_id: str, offset: int = 0, length: int = -1) -> Iterator[bytes]:
        """Plaintext bytes [offset, offset+length) (length -1 = to the end), in ≤ 1 MiB chunks."""
        path = self._path(backup_id)
        try:
            f = path.open("rb")
        except FileNotFoundError as exc:
            raise StorageError("no such archive") from exc
        with f:
            size = self.plain_size(backup_id)
            end = size if length < 0 else min(size, offset + length)
            if self.key is None:
                f.seek(offset)
                left = end - offset
                while left > 0:
                    chunk = f.read(min(left, FRAME))
                    if not chunk:
                        raise StorageError("archive shorter than expected")
                    left -= len(chunk)
                    yield chunk
                return
            yield from self._read_encrypted(f, size, offset, end)

    def _read_encrypted(self, f: Any, size: int, offset: int, end: int) -> Iterator[bytes]:
        assert self.key is not None
        aead = AESGCM(self.key)
        header = f.read(HEADER_SIZE)
        if len(header) != HEADER_SIZE or header[: len(MAGIC)] != MAGIC:
            raise StorageError("archive is not in the encrypted format")
        if int.from_bytes(header[-4:], "big") != FRAME:
            raise StorageError("archive uses another frame size")
        last = max(0, -(-size // FRAME) - 1)
        index = offset // FRAME
        while offset < end:
            f.seek(HEADER_SIZE + index * (FRAME + TAG))
            sealed = f.read(FRAME + TAG)
            try:
                plain = aead.decrypt(
                    _nonce(header, index), sealed, _aad(header, index, index == last)
                )
            except InvalidTag as exc:
                raise StorageError("archive failed authentication (damaged or wrong key)") from exc
            start = offset - index * FRAME
            piece = plain[start : start + (end - offset)]
            yield piece
            offset += len(piece)
            index += 1

    def copy_plain(self, backup_id: str, dest: Path) -> None:
        """Put the plaintext archive at `dest` (for validation of a stored backup).

        Unencrypted archives are hard-linked (same filesystem, no copy, and a concurrent
        DeleteBackup cannot pull the file from under a restore); encrypted ones decrypted.
        """
        if self.key is None:
            try:
                os.link(self._path(backup_id), dest)
                return
            except FileNotFoundError as exc:
                raise StorageError("no such archive") from exc
        with dest.open("xb") as out:
            for chunk in self.read(backup_id):
                out.write(chunk)

    def usage(self) -> tuple[int, int]:
        """(available, capacity) bytes of the filesystem holding the archives."""
        st = os.statvfs(self.archives)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
