"""Pure parts of grainmgr's grains code: ids, stream keys, archive rules, pages, view info."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_grainmgr import sessions, snapshots
from grainhouse_grainmgr.grains import new_grain_id
from grainhouse_grainmgr.packages import view_info
from grainhouse_grainmgr.service import next_token, page
from grainhouse_proto import common_pb2

pytestmark = pytest.mark.unit


def test_grain_ids_are_long_random_base32() -> None:
    ids = {new_grain_id() for _ in range(1000)}
    assert len(ids) == 1000
    for gid in ids:
        assert len(gid) == 32  # 160 bits
        assert set(gid) <= set("abcdefghijklmnopqrstuvwxyz234567")


def test_stream_keys_open_once_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = sessions.StreamKeys()
    ticket = keys.issue("g", "s")
    assert len(ticket.secret) >= 43  # 256 bits in base64url
    assert keys.claim(ticket.secret) == ("g", "s")
    assert keys.claim(ticket.secret) is None
    late = keys.issue("g", "s")
    real = time.monotonic
    monkeypatch.setattr(sessions.time, "monotonic", lambda: real() + 31)
    assert keys.claim(late.secret) is None
    monkeypatch.undo()
    gone = keys.issue("g2", "s")
    keys.forget_grain("g2")
    assert keys.claim(gone.secret) is None
    assert keys.claim("") is None


def test_view_info_from_manifest() -> None:
    info = view_info(
        {
            "permissions": [{"name": "view", "title": "View"}],
            "roles": [{"name": "viewer", "title": "Viewer", "permissions": ["view"]}],
            "default_share_role": "viewer",
        }
    )
    assert info["permissions"] == [{"name": "view", "title": "View", "description": ""}]
    assert info["roles"][0]["isDefault"] is True
    assert view_info({}) == {"permissions": [], "roles": []}


def test_page_tokens_round_trip_and_refuse_junk() -> None:
    assert page(common_pb2.PageRequest()) == (0, 50)
    assert page(common_pb2.PageRequest(page_size=10_000)) == (0, 500)
    token = next_token(0, 10, 10)
    assert page(common_pb2.PageRequest(page_size=10, page_token=token)) == (10, 10)
    assert next_token(0, 10, 3) == ""
    with pytest.raises(GrainhouseError) as info:
        page(common_pb2.PageRequest(page_token="!!"))
    assert info.value.kind is Kind.INVALID


def _writer(tmp_path: Path, quota: int = 1 << 20) -> snapshots.ImportWriter:
    root = tmp_path / "var"
    root.mkdir()
    return snapshots.ImportWriter(root, quota)


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "./a", "a/..", "../a", "a\0b", "x" * 5000])
def test_import_refuses_unclean_paths(tmp_path: Path, path: str) -> None:
    with pytest.raises(GrainhouseError) as info:
        _writer(tmp_path).file(snapshots.Entry(path, snapshots.DIRECTORY, 0o755, 0))
    assert info.value.kind is Kind.INVALID


@pytest.mark.parametrize("target", ["/etc/passwd", "..", "../x", "a/../../x", ""])
def test_import_refuses_escaping_symlinks(tmp_path: Path, target: str) -> None:
    with pytest.raises(GrainhouseError):
        _writer(tmp_path).file(snapshots.Entry("l", snapshots.SYMLINK, 0o777, 0, target=target))


def test_import_writes_a_valid_archive_and_checks_totals(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.file(snapshots.Entry("d", snapshots.DIRECTORY, 0o755, 0))
    w.file(snapshots.Entry("d/f", snapshots.REGULAR, 0o4755, 1000.0, size=5))
    w.data(b"hello")
    w.file(snapshots.Entry("d/l", snapshots.SYMLINK, 0o777, 0, target="f"))
    w.finish(
        {
            "file_count": 3,
            "total_bytes": 5,
            "data_sha256": hashlib.sha256(b"hello").hexdigest(),
        }
    )
    f = tmp_path / "var" / "d" / "f"
    assert f.read_bytes() == b"hello"
    assert f.stat().st_mode & 0o7777 == 0o755  # setuid cleared
    assert (tmp_path / "var" / "d" / "l").readlink() == Path("f")


def test_import_refuses_wrong_sizes_order_and_sums(tmp_path: Path) -> None:
    writers = []
    for i in range(4):
        (tmp_path / str(i)).mkdir()
        writers.append(_writer(tmp_path / str(i), quota=3 if i == 3 else 1 << 20))
    w0, w1, w2, w3 = writers
    try:
        with pytest.raises(GrainhouseError):
            w0.data(b"x")  # data before any file
        w0.file(snapshots.Entry("f", snapshots.REGULAR, 0o644, 0, size=2))
        with pytest.raises(GrainhouseError):
            w0.data(b"xyz")  # more than announced
        w1.file(snapshots.Entry("f", snapshots.REGULAR, 0o644, 0, size=2))
        w1.data(b"x")
        with pytest.raises(GrainhouseError):
            w1.finish({"file_count": 1, "total_bytes": 1, "data_sha256": ""})  # short file
        with pytest.raises(GrainhouseError):
            w2.file(snapshots.Entry("a/b", snapshots.REGULAR, 0o644, 0, size=0))  # no parent
        with pytest.raises(GrainhouseError) as info:
            w3.file(snapshots.Entry("big", snapshots.REGULAR, 0o644, 0, size=4))
        assert info.value.kind is Kind.TOO_LARGE
    finally:
        for w in writers:
            w.abort()


def test_snapshot_walk_orders_directories_first_and_skips_specials(tmp_path: Path) -> None:
    import os

    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b" / "x").write_bytes(b"12")
    (src / "a").write_bytes(b"1")
    os.symlink("a", src / "c")
    os.mkfifo(src / "fifo")
    walked = list(snapshots.walk_snapshot(src))  # the live /var itself: no copy
    assert [e for e in walked if isinstance(e, int)] == [1]  # the fifo
    entries = [e for e in walked if not isinstance(e, int)]
    assert [e.path for e in entries] == ["a", "b", "b/x", "c"]
    assert [e.type for e in entries] == [
        snapshots.REGULAR,
        snapshots.DIRECTORY,
        snapshots.REGULAR,
        snapshots.SYMLINK,
    ]
