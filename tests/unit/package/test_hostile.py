"""Hostile packages: each is refused with an error naming the problem, and leaves nothing."""

from __future__ import annotations

import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import Caps, PackageError, install_package, pack_directory, verify_package
from tests.unit.package.conftest import Member, manifest_bytes, standard_members, tar_bytes

pytestmark = pytest.mark.unit

Craft = Callable[..., Path]
MIB = 1024 * 1024


def refuse(
    pkg: Path,
    packages_root: Path,
    kind: str,
    words: str,
    caps: Caps = Caps(),  # noqa: B008
) -> PackageError:
    """Both verify and install must refuse; install must leave the packages root empty."""
    with pytest.raises(PackageError) as verified:
        verify_package(pkg, caps)
    assert verified.value.kind == kind, verified.value
    assert words in verified.value.message, verified.value.message
    with pytest.raises(PackageError) as installed:
        install_package(pkg, packages_root, caps)
    assert installed.value.kind == kind
    assert words in installed.value.message
    assert list(packages_root.iterdir()) == [], "a refused install left something behind"
    return installed.value


def test_bad_signature_altered_payload(craft: Craft, packages_root: Path) -> None:
    pkg = craft()
    data = bytearray(pkg.read_bytes())
    data[-20] ^= 0xFF
    pkg.write_bytes(bytes(data))
    refuse(pkg, packages_root, "invalid", "bad signature")


def test_missing_signature(craft: Craft, packages_root: Path) -> None:
    pkg = craft()
    data = bytearray(pkg.read_bytes())
    data[48:112] = bytes(64)
    pkg.write_bytes(bytes(data))
    refuse(pkg, packages_root, "invalid", "not signed")


def test_signed_by_another_key_for_installed_app_id(
    craft: Craft, key: Ed25519PrivateKey, tmp_path: Path, packages_root: Path
) -> None:
    from tests.unit.package.conftest import wrap

    legit = install_package(craft(), packages_root)
    before = sorted(p.name for p in packages_root.iterdir())
    intruder = Ed25519PrivateKey.generate()
    payload = lzma.compress(tar_bytes(standard_members(manifest=manifest_bytes(version=3))))
    forged = tmp_path / "forged.pkg"
    forged.write_bytes(wrap(payload, signer=intruder, claimed=key))
    with pytest.raises(PackageError) as err:
        install_package(forged, packages_root)
    assert err.value.kind == "invalid"
    assert f"not signed by the key of app id {legit.app_id}" in err.value.message
    assert sorted(p.name for p in packages_root.iterdir()) == before


def test_not_a_package(tmp_path: Path, packages_root: Path) -> None:
    pkg = tmp_path / "x.pkg"
    pkg.write_bytes(b"PK\x03\x04 this is a zip file")
    refuse(pkg, packages_root, "invalid", "bad magic")


def test_truncated_file(craft: Craft, packages_root: Path) -> None:
    pkg = craft()
    pkg.write_bytes(pkg.read_bytes()[:-50])
    refuse(pkg, packages_root, "invalid", "truncated package")


def test_truncated_header(craft: Craft, packages_root: Path) -> None:
    pkg = craft()
    pkg.write_bytes(pkg.read_bytes()[:60])
    refuse(pkg, packages_root, "invalid", "header is incomplete")


def test_trailing_data_after_payload(craft: Craft, packages_root: Path) -> None:
    pkg = craft()
    pkg.write_bytes(pkg.read_bytes() + b"extra")
    refuse(pkg, packages_root, "invalid", "data after the end of the payload")


def test_corrupt_compressed_data_even_if_signed(craft: Craft, packages_root: Path) -> None:
    refuse(
        craft(payload=b"\xfd7zXZ\x00garbage" * 10), packages_root, "invalid", "corrupt compressed"
    )


def test_truncated_compressed_stream_even_if_signed(craft: Craft, packages_root: Path) -> None:
    whole = lzma.compress(tar_bytes(standard_members()))
    refuse(craft(payload=whole[: len(whole) // 2]), packages_root, "invalid", "truncated archive")


def test_corrupt_tar_even_if_signed(craft: Craft, packages_root: Path) -> None:
    refuse(craft(tar=b"\x01" * 4096), packages_root, "invalid", "corrupt archive")


def test_declared_size_larger_than_data(craft: Craft, packages_root: Path) -> None:
    raw = bytearray(tar_bytes(standard_members(Member("files/big", b"x" * 100))))
    # Cut the tar inside the last file's data: the header promises bytes that never come.
    cut = raw.rindex(b"x" * 100) + 10
    refuse(craft(tar=bytes(raw[:cut])), packages_root, "invalid", "archive")


@pytest.mark.parametrize("where", ["after the last record", "inside the padding"])
def test_garbage_after_end_of_archive(craft: Craft, packages_root: Path, where: str) -> None:
    raw = tar_bytes(standard_members())
    if where == "inside the padding":
        raw = raw[:-100] + b"\x07" * 100
    else:
        raw += b"\x07" * 512
    refuse(craft(tar=raw), packages_root, "invalid", "after the end-of-archive")


@pytest.mark.parametrize(
    ("member", "words"),
    [
        (Member("files/../../escape.txt", b"x"), "path traversal"),
        (Member("../escape.txt", b"x"), "path traversal"),
        (Member("/etc/escape.txt", b"x"), "absolute path"),
        (Member("elsewhere.txt", b"x"), "outside files/"),
        (Member("files/a//b", b"x"), "malformed path"),
        (Member("files/./b", b"x"), "malformed path"),
        (Member("files/" + "a" * 300, b"x"), "too long"),
        (
            Member("files/out", kind=tarfile.SYMTYPE, mode=0o777, linkname="../../etc/passwd"),
            "symlink points outside",
        ),
        (
            Member("files/abs", kind=tarfile.SYMTYPE, mode=0o777, linkname="/etc/passwd"),
            "symlink points outside",
        ),
        (
            Member("files/hl", kind=tarfile.LNKTYPE, linkname="../../etc/shadow"),
            "hard link points outside",
        ),
        (Member("files/hl", kind=tarfile.LNKTYPE, linkname="files/main.py"), "hard links"),
        (Member("files/main.py", b"again"), "duplicate entry name"),
        (Member("files/null", kind=tarfile.CHRTYPE, mode=0o666), "device files"),
        (Member("files/sda", kind=tarfile.BLKTYPE, mode=0o666), "device files"),
        (Member("files/pipe", kind=tarfile.FIFOTYPE, mode=0o666), "FIFOs"),
        (Member("files/suid", b"#!/bin/sh\n", mode=0o4755), "setuid bit"),
        (Member("files/sgid", b"#!/bin/sh\n", mode=0o2755), "setgid bit"),
        (Member("files/dir", kind=tarfile.DIRTYPE, mode=0o2755), "setgid bit"),
        (Member("files/cont", kind=tarfile.CONTTYPE), "unsupported entry type"),
        (Member("files/main.py/x", b"x"), "passes through the file"),
    ],
    ids=lambda v: v.name if isinstance(v, Member) else v,
)
def test_bad_entry(craft: Craft, packages_root: Path, member: Member, words: str) -> None:
    refuse(craft(standard_members(member)), packages_root, "invalid", words)
    assert not (packages_root.parent / "escape.txt").exists()


def test_write_through_symlink(craft: Craft, packages_root: Path) -> None:
    members = standard_members(
        Member("files/sub", kind=tarfile.DIRTYPE, mode=0o755),
        Member("files/link", kind=tarfile.SYMTYPE, mode=0o777, linkname="sub"),
        Member("files/link/x.txt", b"x"),
    )
    refuse(craft(members), packages_root, "invalid", "passes through the symlink")


def test_symlink_chain_escapes_lexical_check(craft: Craft, packages_root: Path) -> None:
    # files/d/e/up -> ../.. is files/ itself; files/d/e/esc -> up/.. reads as files/d but
    # really resolves to files/.. : chains through other symlinks are refused.
    members = standard_members(
        Member("files/d/e", kind=tarfile.DIRTYPE, mode=0o755),
        Member("files/d/e/esc", kind=tarfile.SYMTYPE, mode=0o777, linkname="up/.."),
        Member("files/d/e/up", kind=tarfile.SYMTYPE, mode=0o777, linkname="../.."),
    )
    refuse(craft(members), packages_root, "invalid", "passes through symlink")


def test_compression_bomb(craft: Craft, packages_root: Path) -> None:
    caps = Caps(expansion_check_after_bytes=MIB, max_expansion_ratio=100)
    bomb = standard_members(Member("files/zeros", bytes(16 * MIB)))
    refuse(craft(bomb), packages_root, "too_large", "compression bomb", caps)


def test_stream_cap_stops_decompression(craft: Craft, packages_root: Path) -> None:
    caps = Caps(max_unpacked_bytes=MIB, max_entries=10)
    bomb = standard_members(Member("files/zeros", bytes(8 * MIB)))
    err = refuse(craft(bomb), packages_root, "too_large", "", caps)
    assert "compression bomb" in err.message or "files total more than" in err.message


def test_too_many_bytes(craft: Craft, packages_root: Path) -> None:
    members = standard_members(Member("files/a", os.urandom(3000)))
    refuse(
        craft(members),
        packages_root,
        "too_large",
        "files total more than",
        Caps(max_unpacked_bytes=2000),
    )


def test_too_many_files(craft: Craft, packages_root: Path) -> None:
    members = standard_members(*[Member(f"files/f{i}", b"x") for i in range(10)])
    refuse(craft(members), packages_root, "too_large", "more than 5 entries", Caps(max_entries=5))


def test_package_file_too_large(craft: Craft, packages_root: Path) -> None:
    refuse(craft(), packages_root, "too_large", "the cap is 100", Caps(max_package_bytes=100))


def test_oversized_pax_header_refused_before_reading(craft: Craft, packages_root: Path) -> None:
    huge = {"comment": "y" * (200 * 1024)}
    members = standard_members(Member("files/x", b"x", pax=huge))
    refuse(craft(members), packages_root, "invalid", "metadata header")


def test_invalid_manifest(craft: Craft, packages_root: Path) -> None:
    members = standard_members(manifest=manifest_bytes(version="two"))
    refuse(craft(members), packages_root, "invalid", "manifest.version: must be an integer")


def test_oversized_manifest(craft: Craft, packages_root: Path) -> None:
    members = standard_members(manifest=manifest_bytes(description="d" * 70_000))
    refuse(craft(members), packages_root, "too_large", "manifest is")


def test_manifest_must_come_first(craft: Craft, packages_root: Path) -> None:
    members = standard_members()
    members.reverse()
    refuse(craft(members), packages_root, "invalid", "first archive entry")


def test_empty_archive(craft: Craft, packages_root: Path) -> None:
    refuse(craft(tar=bytes(10240)), packages_root, "invalid", "archive")


def test_icon_must_exist(craft: Craft, packages_root: Path) -> None:
    members = standard_members(manifest=manifest_bytes(icons={"app": "missing.svg"}))
    refuse(craft(members), packages_root, "invalid", "manifest.icons.app")


def test_failed_install_mid_stream_removes_temp_dir(craft: Craft, packages_root: Path) -> None:
    # Many good files first, then a bad one: extraction had started when it was refused.
    good = [Member(f"files/ok{i}.txt", b"fine") for i in range(20)]
    members = standard_members(*good, Member("files/dev", kind=tarfile.CHRTYPE))
    refuse(craft(members), packages_root, "invalid", "device files")


def test_pack_refuses_what_verify_would(
    key: Ed25519PrivateKey, app_dir: Path, tmp_path: Path
) -> None:
    (app_dir / "grainhouse.json").write_bytes(manifest_bytes(icons={"app": "nope.svg"}))
    out = tmp_path / "out.pkg"
    with pytest.raises(PackageError, match=r"manifest\.icons\.app"):
        pack_directory(app_dir, out, key)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.pkg")] == []
