"""Local storage: atomic writes, ranges, encryption at rest that detects tampering."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from grainhouse_backup import storage
from grainhouse_backup.storage import FRAME, LocalStorage, StorageError

pytestmark = pytest.mark.unit

BID = "abcdefghijklmnop0123"
KEY = bytes(range(32))


def store(tmp_path: Path, data: bytes, key: bytes | None) -> LocalStorage:
    s = LocalStorage(tmp_path / "st", key)
    w = s.writer(BID)
    for i in range(0, len(data), 300_000):
        w.write(data[i : i + 300_000])
    written = w.commit()
    assert written.size_bytes == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    return s


SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 2 * FRAME, 2 * FRAME + 12345]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aesgcm"])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_ranges(tmp_path: Path, key: bytes | None, size: int) -> None:
    data = os.urandom(size)
    s = store(tmp_path, data, key)
    assert s.plain_size(BID) == size
    assert b"".join(s.read(BID)) == data
    for offset, length in [(0, 10), (size // 2, FRAME), (max(size - 5, 0), 100), (size, 0)]:
        assert b"".join(s.read(BID, offset, length)) == data[offset : offset + length]
    assert list(s.tmp.iterdir()) == []  # nothing left in tmp


def test_encrypted_file_holds_no_plaintext(tmp_path: Path) -> None:
    data = b"secret grain data " * 1000
    s = store(tmp_path, data, KEY)
    raw = (s.archives / f"{BID}.zip").read_bytes()
    assert b"secret grain data" not in raw


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop_last_frame", "wrong_key"])
def test_tampering_is_detected(tmp_path: Path, damage: str) -> None:
    data = os.urandom(2 * FRAME + 100)
    s = store(tmp_path, data, KEY)
    path = s.archives / f"{BID}.zip"
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[storage.HEADER_SIZE + 10] ^= 1
    elif damage == "truncate":
        raw = raw[:-50]
    elif damage == "drop_last_frame":
        raw = raw[: storage.HEADER_SIZE + 2 * (FRAME + storage.TAG)]
    path.write_bytes(bytes(raw))
    reader = LocalStorage(s.root, bytes(32) if damage == "wrong_key" else KEY)
    with pytest.raises(StorageError, match="failed authentication"):
        b"".join(reader.read(BID))


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "st")
    w = s.writer(BID)
    w.write(b"partial")
    w.abort()
    assert not s.exists(BID) and list(s.tmp.iterdir()) == []


def test_clean_tmp_removes_leftovers(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "st")
    (s.tmp / f"{BID}.dead.part").write_bytes(b"a crash happened here")
    s.work_dir()
    assert s.clean_tmp() == 2 and list(s.tmp.iterdir()) == []


def test_ids_cannot_escape(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path / "st")
    with pytest.raises(StorageError):
        s.writer("../../etc/passwd")


def test_keys(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(KEY.hex() + "\n")
    assert storage.key_from_file(tmp_path / "k") == KEY
    (tmp_path / "bad").write_text("short")
    with pytest.raises(StorageError):
        storage.key_from_file(tmp_path / "bad")
    a = storage.key_from_passphrase("correct horse", tmp_path / "st")
    assert a == storage.key_from_passphrase("correct horse", tmp_path / "st")
    assert a != storage.key_from_passphrase("wrong horse", tmp_path / "st")
    assert len(a) == 32


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aesgcm"])
def test_copy_plain(tmp_path: Path, key: bytes | None) -> None:
    data = os.urandom(FRAME + 77)
    s = store(tmp_path, data, key)
    work = s.work_dir()
    s.copy_plain(BID, work / "a.zip")
    assert (work / "a.zip").read_bytes() == data
    s.delete(BID)  # a restore holding its copy is not affected
    assert (work / "a.zip").read_bytes() == data
