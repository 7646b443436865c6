"""The rotated log writer and the /var usage measurement."""

from __future__ import annotations

from pathlib import Path

import pytest

from grainhouse_grainmgr import quota
from grainhouse_grainmgr.logsink import LogSink

pytestmark = pytest.mark.unit


def test_log_rotates_and_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "log"
    sink = LogSink(str(path), max_bytes=100, keep=2)
    for i in range(10):
        sink.write(bytes([65 + i]) * 60)
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["log", "log.1", "log.2"]
    assert all((tmp_path / n).stat().st_size <= 100 for n in names)
    assert path.read_bytes().endswith(b"J" * 60)  # newest data in the live file


def test_log_keep_zero_truncates(tmp_path: Path) -> None:
    sink = LogSink(str(tmp_path / "log"), max_bytes=10, keep=0)
    sink.write(b"x" * 25)
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["log"]
    assert (tmp_path / "log").read_bytes() == b"x" * 5


def test_log_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        LogSink(str(tmp_path / "log"), 100, 1)


def test_measure_counts_blocks_without_following_links(tmp_path: Path) -> None:
    empty = quota.measure(str(tmp_path))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(50_000_000)  # allocates (almost) nothing
    (tmp_path / "link").symlink_to("/usr")
    used = quota.measure(str(tmp_path)) - empty
    assert 100_000 <= used < 1_000_000
