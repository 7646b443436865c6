"""Every hostile archive is refused with the reason and message that name it."""

from __future__ import annotations

import asyncio
import json
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from grainhouse_backup import archive, archive_rules, validation
from grainhouse_backup import verdicts as v
from grainhouse_proto import backup_pb2
from tests.unit.backup.conftest import GOOD, HEADER, Hostile, Raw, write_good, write_hostile

pytestmark = pytest.mark.unit

LIMITS = v.Limits()
F = stat.S_IFREG | 0o644


def check(path: Path, limits: v.Limits = LIMITS) -> v.Verdict:
    with path.open("rb") as f:
        return archive_rules.check_archive(f, limits)


def hostile(tmp_path: Path, spec: Hostile) -> Path:
    path = tmp_path / "h.zip"
    write_hostile(path, spec).close()
    return path


def test_every_reason_is_a_proto_enum_value() -> None:
    names = {
        getattr(v, n)
        for n in dir(v)
        if n.isupper() and isinstance(getattr(v, n), str) and n == getattr(v, n)
    }
    for name in names:
        assert backup_pb2.ArchiveRefusalReason.Value(f"ARCHIVE_REFUSAL_REASON_{name}") > 0


def test_a_good_archive_passes(tmp_path: Path) -> None:
    write_good(tmp_path / "g.zip")
    verdict = check(tmp_path / "g.zip")
    assert verdict.ok, verdict
    assert verdict.total_bytes == sum(len(d) for d in GOOD.values())


@pytest.mark.parametrize(
    ("name", "reason", "message"),
    [
        ("data/../../etc/passwd", v.ZIP_SLIP, "climbs out"),
        ("data/a/../../../x", v.ZIP_SLIP, "climbs out"),
        ("data/../x", v.ZIP_SLIP, "climbs out"),
        ("/etc/passwd", v.ABSOLUTE_PATH, "absolute"),
        ("C:\\windows\\x", v.ABSOLUTE_PATH, "absolute"),
        ("\\\\server\\share\\x", v.ABSOLUTE_PATH, "absolute"),
        ("data/bad\x01name", v.BAD_NAME, "control character"),
        ("data/" + "a" * 300, v.BAD_NAME, "longer than 255"),
        ("data/" + "/".join(["abcdefgh"] * 500), v.BAD_NAME, "longer than 4096"),
    ],
)
def test_hostile_names(tmp_path: Path, name: str, reason: str, message: str) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/ok", b"x"), Raw(name, b"evil")]))
    verdict = check(path)
    assert (verdict.ok, verdict.reason) == (False, reason)
    assert message in verdict.message
    assert verdict.entry  # names the entry


def test_name_not_utf8(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/ok", b"x")]))
    raw = path.read_bytes().replace(b"data/ok", b"data/\xff\xfe")
    path.write_bytes(raw)
    verdict = check(path)
    assert (verdict.reason, verdict.message) == (v.BAD_NAME, "an entry name is not valid UTF-8")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Raw("data/l", b"/etc/passwd", stat.S_IFLNK | 0o777)], "points outside"),
        (
            [
                Raw("data/d/", b"", stat.S_IFDIR | 0o755),
                Raw("data/d/l", b"../../x", stat.S_IFLNK | 0o777),
            ],
            "points outside",
        ),
        (
            [Raw("data/l", b"sub", stat.S_IFLNK | 0o777), Raw("data/l/x", b"via link")],
            "passes through a symlink",
        ),
    ],
)
def test_symlinks(tmp_path: Path, entries: list[Raw], message: str) -> None:
    verdict = check(hostile(tmp_path, Hostile(entries)))
    assert (verdict.reason, message in verdict.message) == (v.SYMLINK, True), verdict


def test_a_safe_symlink_passes(tmp_path: Path) -> None:
    entries = [Raw("data/t", b"target"), Raw("data/l", b"t", stat.S_IFLNK | 0o777)]
    assert check(hostile(tmp_path, Hostile(entries))).ok


def test_hard_link_two_names_one_body(tmp_path: Path) -> None:
    path = tmp_path / "h.zip"
    zf = write_hostile(path, Hostile([Raw("data/a", b"same"), Raw("data/b", b"same")]))
    zf.filelist[1].header_offset = zf.filelist[0].header_offset
    zf.close()
    verdict = check(path)
    assert (verdict.reason, verdict.message) == (
        v.HARD_LINK,
        "two entries share one body (a hard link)",
    )
    assert verdict.entry == "data/b"


@pytest.mark.parametrize("fmt", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_files(tmp_path: Path, fmt: int) -> None:
    verdict = check(hostile(tmp_path, Hostile([Raw("data/dev", b"", fmt | 0o666)])))
    assert (verdict.reason, verdict.message) == (
        v.DEVICE_FILE,
        "an entry is a device, fifo or socket",
    )


@pytest.mark.parametrize(
    "names",
    [["data/a", "data//a"], ["data/a", "data/./a"], ["data/a", "data/a/"]],
)
def test_duplicate_names(tmp_path: Path, names: list[str]) -> None:
    entries = [
        Raw(n, b"", stat.S_IFDIR | 0o755) if n.endswith("/") else Raw(n, b"x") for n in names
    ]
    verdict = check(hostile(tmp_path, Hostile(entries)))
    assert (verdict.reason, verdict.message) == (v.DUPLICATE_NAME, "two entries have the same name")


def test_exact_duplicate_name(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we want
        path = hostile(tmp_path, Hostile([Raw("data/a", b"1"), Raw("data/a", b"2", listed=False)]))
    assert check(path).reason == v.DUPLICATE_NAME


def test_size_bomb_declared(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/a", b"x" * 5000), Raw("data/b", b"y" * 5000)]))
    verdict = check(path, v.Limits(max_total_bytes=8000))
    assert (verdict.reason, verdict.message) == (
        v.SIZE_BOMB,
        "the archive expands to more than 8000 bytes",
    )


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_size_bomb_entry_longer_than_declared(tmp_path: Path, compress: int) -> None:
    meta = archive.Metadata(
        HEADER, [archive.FileRecord("a", archive.REGULAR, 0o644, 0, 10, "0" * 64)]
    )
    path = hostile(
        tmp_path, Hostile([Raw("data/a", b"A" * 4000, compress=compress)], meta.to_json())
    )
    raw = bytearray(path.read_bytes())
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (10).to_bytes(4, "little")  # the central directory lies: 10 bytes
    path.write_bytes(bytes(raw))
    verdict = check(path)
    assert (verdict.reason, verdict.message, verdict.entry) == (
        v.SIZE_BOMB,
        "an entry is larger than it declared",
        "data/a",
    )


def test_ratio_bomb(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/zeros", bytes(4 * 1024 * 1024))]))
    verdict = check(path)
    assert (verdict.reason, verdict.message) == (
        v.RATIO_BOMB,
        "an entry's compression ratio exceeds 200:1",
    )
    assert verdict.entry == "data/zeros"


def test_too_many_files(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw(f"data/f{i}", b"x") for i in range(10)]))
    verdict = check(path, v.Limits(max_files=5))
    assert (verdict.reason, verdict.message) == (
        v.TOO_MANY_FILES,
        "the archive holds more than 5 entries",
    )


def test_truncated(tmp_path: Path) -> None:
    write_good(tmp_path / "g.zip")
    data = (tmp_path / "g.zip").read_bytes()
    (tmp_path / "g.zip").write_bytes(data[: len(data) // 2])
    verdict = check(tmp_path / "g.zip")
    assert (verdict.reason, verdict.message) == (
        v.TRUNCATED_OR_CORRUPT,
        "not a ZIP archive, or cut short",
    )


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"this is not a zip file at all" * 10)
    assert check(tmp_path / "x.zip").reason == v.TRUNCATED_OR_CORRUPT


def test_corrupt_crc(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/a", b"A" * 1000, compress=zipfile.ZIP_STORED)]))
    raw = bytearray(path.read_bytes())
    at = raw.find(b"A" * 1000)
    raw[at + 500] = ord("B")
    path.write_bytes(bytes(raw))
    verdict = check(path)
    assert (verdict.reason, verdict.message) == (
        v.TRUNCATED_OR_CORRUPT,
        "an entry is corrupt (CRC error)",
    )


def test_encrypted_entry(tmp_path: Path) -> None:
    path = tmp_path / "h.zip"
    zf = write_hostile(path, Hostile([Raw("data/a", b"x")]))
    zf.filelist[0].flag_bits |= 0x1
    zf.close()
    assert check(path).message == "an entry is encrypted"


def test_unsupported_compression(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/a", b"x" * 100, compress=zipfile.ZIP_BZIP2)]))
    verdict = check(path)
    assert verdict.message == "an entry uses an unsupported compression method"


def test_checksum_mismatch(tmp_path: Path) -> None:
    meta = archive.Metadata(
        HEADER, [archive.FileRecord("a", archive.REGULAR, 0o644, 0, 3, "0" * 64)]
    )
    path = hostile(tmp_path, Hostile([Raw("data/a", b"abc", listed=False)], meta.to_json()))
    verdict = check(path)
    assert (verdict.reason, verdict.message, verdict.entry) == (
        v.CHECKSUM_MISMATCH,
        "an entry's content does not match its checksum",
        "data/a",
    )


def test_unlisted_and_missing_files(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("data/a", b"1"), Raw("data/extra", b"2", listed=False)]))
    assert check(path).message == "a file is not in the checksum list"
    meta = archive.Metadata(
        HEADER, [archive.FileRecord("gone", archive.REGULAR, 0o644, 0, 0, "0" * 64)]
    )
    path = hostile(tmp_path, Hostile([], meta.to_json()))
    verdict = check(path)
    assert (verdict.reason, verdict.message, verdict.entry) == (
        v.CHECKSUM_MISMATCH,
        "a listed file is missing",
        "data/gone",
    )


def _meta(**changes: object) -> bytes:
    doc = json.loads(archive.Metadata(HEADER, []).to_json())
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (b"", "the archive has no grainhouse-backup.json"),
        (b"{not json", "metadata is not valid JSON"),
        (_meta(format_version=99), "unknown metadata format version 99"),
        (_meta(app_id=""), "metadata field 'app_id' is empty"),
        (_meta(app_version=-1), "metadata field 'app_version' is not a non-negative integer"),
        (_meta(files="nope"), "metadata has no file list"),
    ],
)
def test_bad_metadata(tmp_path: Path, metadata: bytes, message: str) -> None:
    verdict = check(hostile(tmp_path, Hostile([], metadata)))
    assert (verdict.reason, verdict.message) == (v.BAD_METADATA, message)


def test_entry_before_its_directory(tmp_path: Path) -> None:
    verdict = check(hostile(tmp_path, Hostile([Raw("data/d/x", b"1")])))
    assert (verdict.reason, verdict.message, verdict.entry) == (
        v.BAD_METADATA,
        "the metadata lists an entry before its directory",
        "data/d/x",
    )


def test_entry_outside_data(tmp_path: Path) -> None:
    path = hostile(tmp_path, Hostile([Raw("etc/x", b"1", listed=False)]))
    assert (check(path).reason, check(path).entry) == (v.CHECKSUM_MISMATCH, "etc/x")


def test_confined_process_refuses_and_accepts(tmp_path: Path) -> None:
    """The real path: a separate, confined interpreter reading the archive on stdin."""
    empty = tmp_path / "empty"
    empty.mkdir()
    write_good(tmp_path / "g.zip")
    good = asyncio.run(validation.validate_file(str(tmp_path / "g.zip"), LIMITS, str(empty), 60))
    assert good.ok, good
    assert "rlimits" in good.confinement and "no_new_privs" in good.confinement
    bad = hostile(tmp_path, Hostile([Raw("data/../../x", b"1")]))
    verdict = asyncio.run(validation.validate_file(str(bad), LIMITS, str(empty), 60))
    assert (verdict.ok, verdict.reason) == (False, v.ZIP_SLIP)


def test_confined_process_has_no_network(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_good(tmp_path / "g.zip")
    verdict = asyncio.run(validation.validate_file(str(tmp_path / "g.zip"), LIMITS, str(empty), 60))
    if "netns" not in verdict.confinement:
        pytest.skip("user namespaces are not available on this kernel")
    assert "chroot" in verdict.confinement
