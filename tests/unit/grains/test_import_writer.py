"""ImportWriter's writer threads: small files written whole in parallel, large ones as they come,
every byte, mode and time as the archive says, errors raised, nothing running after abort."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr import snapshots

pytestmark = pytest.mark.unit
MiB = 1024 * 1024


def _writer(tmp_path: Path) -> snapshots.ImportWriter:
    root = tmp_path / "var"
    root.mkdir()
    return snapshots.ImportWriter(root, 1 << 40, hash_data=False)


def _import_writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("import-write")]


def _put(w: snapshots.ImportWriter, path: str, body: bytes, mode: int, mtime: float) -> None:
    w.file(snapshots.Entry(path, snapshots.REGULAR, mode, mtime, size=len(body)))
    for i in range(0, len(body), MiB):
        w.data(body[i : i + MiB])


@pytest.mark.parametrize("in_flight_files", [1, 1024])
def test_small_and_large_files_arrive_whole_with_mode_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_flight_files: int
) -> None:
    # One file in flight at a time makes every small file wait for the one before.
    monkeypatch.setattr(snapshots, "IMPORT_IN_FLIGHT_FILES", in_flight_files)
    w = _writer(tmp_path)
    w.file(snapshots.Entry("d", snapshots.DIRECTORY, 0o750, 0))
    bodies = {f"d/f{i:03d}": os.urandom(1 + i * 997) for i in range(200)}
    bodies["empty"] = b""
    bodies["d/exactly-1mib"] = os.urandom(snapshots.IMPORT_SMALL_FILE_BYTES)
    bodies["large"] = os.urandom(snapshots.IMPORT_SMALL_FILE_BYTES * 3 + 5)  # written inline
    for n, (path, body) in enumerate(bodies.items()):
        _put(w, path, body, 0o640 if n % 2 else 0o600, 1_700_000_000.5 + n)
    w.finish({"file_count": len(bodies) + 1, "total_bytes": w.total, "data_sha256": ""})
    assert w.total == sum(map(len, bodies.values()))
    root = tmp_path / "var"
    for n, (path, body) in enumerate(bodies.items()):
        st = (root / path).stat()
        assert (root / path).read_bytes() == body, path
        assert st.st_mode & 0o7777 == (0o640 if n % 2 else 0o600), path
        assert st.st_mtime == pytest.approx(1_700_000_000.5 + n, abs=1e-3), path
    assert (root / "d").stat().st_mode & 0o7777 == 0o750
    assert not _import_writers()  # finish stopped its threads


@pytest.mark.parametrize("settled", [False, True])
def test_a_writer_threads_error_is_raised_by_finish(tmp_path: Path, settled: bool) -> None:
    w = _writer(tmp_path)
    (tmp_path / "var" / "taken").write_bytes(b"was here first")  # O_EXCL refuses to overwrite
    _put(w, "taken", b"new", 0o644, 0)
    _put(w, "fine", b"ok", 0o644, 0)
    if settled:  # the failed write is over before finish ends the last file (where it is seen)
        while not w._writing[0].done():
            time.sleep(0.001)
    with pytest.raises(FileExistsError):
        w.finish({"file_count": 2, "total_bytes": 5, "data_sha256": ""})
    assert (tmp_path / "var" / "taken").read_bytes() == b"was here first"
    assert not _import_writers()


def test_abort_leaves_no_writer_running_and_no_open_file(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(300):
        _put(w, f"f{i}", b"x" * 4096, 0o644, 0)
    w.file(snapshots.Entry("big", snapshots.REGULAR, 0o644, 0, size=3 * MiB))
    w.data(b"y" * MiB)  # a large file half written, open here
    w.abort()
    assert not _import_writers()
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(GrainhouseError):
        w.data(b"z")  # nothing is open any more


def test_a_short_small_file_is_refused_before_it_is_written(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.file(snapshots.Entry("short", snapshots.REGULAR, 0o644, 0, size=10))
    w.data(b"12345")
    with pytest.raises(GrainhouseError):
        w.file(snapshots.Entry("next", snapshots.REGULAR, 0o644, 0, size=0))
    w.abort()
    assert not (tmp_path / "var" / "short").exists()
