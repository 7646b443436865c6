"""Packing, verifying and installing good packages; pack's own refusals; author keys."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import (
    Caps,
    PackageError,
    app_id_from_public_key,
    generate_key,
    install_package,
    load_installed,
    load_key,
    pack_directory,
    public_key_bytes,
    remove_package,
    save_key,
    verify_package,
)
from grainhouse_package.keys import public_key_from_app_id

pytestmark = pytest.mark.unit


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "author.key"
    save_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_key(path)
    assert public_key_bytes(again) == public_key_bytes(key)
    with pytest.raises(PackageError) as err:
        save_key(generate_key(), path)
    assert err.value.kind == "conflict"
    assert public_key_bytes(load_key(path)) == public_key_bytes(key), "key was overwritten"


def test_app_id_is_lowercase_base32_of_the_public_key() -> None:
    raw = public_key_bytes(generate_key())
    app_id = app_id_from_public_key(raw)
    assert len(app_id) == 52 and app_id == app_id.lower() and "=" not in app_id
    assert public_key_from_app_id(app_id) == raw


def test_load_key_refuses_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    with pytest.raises(PackageError, match="not an unencrypted PEM key"):
        load_key(junk)
    with pytest.raises(PackageError) as err:
        load_key(tmp_path / "missing.key")
    assert err.value.kind == "not_found"


def test_pack_verify_install(
    app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path, packages_root: Path
) -> None:
    out = tmp_path / "app.pkg"
    packed = pack_directory(app_dir, out, key)
    verified = verify_package(out)
    assert verified == packed
    assert verified.app_id == app_id_from_public_key(public_key_bytes(key))
    import hashlib

    assert verified.package_id == hashlib.sha256(out.read_bytes()).hexdigest()
    assert verified.manifest.title == "Test App"

    installed = install_package(out, packages_root)
    assert installed.newly_installed
    assert installed.path == packages_root / verified.package_id
    files = installed.files_dir
    assert (files / "main.py").read_text() == "print('hello')\n"
    assert (files / "static" / "alias.svg").readlink() == Path("icon.svg")
    assert (files / "static" / "alias.svg").read_text() == "<svg/>"
    assert not (files / "grainhouse.json").exists(), "the manifest is metadata, not an app file"
    assert stat.S_IMODE((files / "main.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((files / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE(files.stat().st_mode) == 0o555
    assert stat.S_IMODE(installed.path.stat().st_mode) == 0o555
    assert sorted(p.name for p in packages_root.iterdir()) == [verified.package_id]

    again = install_package(out, packages_root)
    assert not again.newly_installed
    assert again.manifest == installed.manifest and again.app_id == installed.app_id
    assert load_installed(installed.path) == again

    remove_package(packages_root, verified.package_id)
    assert list(packages_root.iterdir()) == []


def test_packing_is_reproducible(app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    a = pack_directory(app_dir, tmp_path / "a.pkg", key)
    os.utime(app_dir / "main.py", (1, 1))
    b = pack_directory(app_dir, tmp_path / "b.pkg", key)
    assert a.package_id == b.package_id
    (app_dir / "main.py").write_text("print('changed')\n")
    c = pack_directory(app_dir, tmp_path / "c.pkg", key)
    assert c.package_id != a.package_id and c.app_id == a.app_id


def test_verify_reads_a_non_seekable_stream(
    app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    out = tmp_path / "app.pkg"
    packed = pack_directory(app_dir, out, key)
    r, w = os.pipe()
    data = out.read_bytes()
    assert len(data) < 60_000  # fits in the pipe buffer, so no writer thread is needed
    os.write(w, data)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as pipe:
        assert verify_package(pipe) == packed
    assert verify_package(io.BytesIO(data)) == packed


def test_install_into_missing_root(app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    out = tmp_path / "app.pkg"
    pack_directory(app_dir, out, key)
    with pytest.raises(PackageError) as err:
        install_package(out, tmp_path / "nope")
    assert err.value.kind == "not_found"


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda d: (d / "out").symlink_to("../../etc"), "symlink points outside DIR"),
        (lambda d: (d / "abs").symlink_to("/etc/passwd"), "symlink to absolute path"),
        (lambda d: os.mkfifo(d / "pipe"), "is a FIFO"),
        (lambda d: (d / "main.py").chmod(0o4755), "setuid bit"),
        (lambda d: (d / "static").chmod(0o2755), "setgid bit"),
        (lambda d: (d / "bad\nname").write_text("x"), "file name not allowed"),
    ],
    ids=["symlink-out", "symlink-abs", "fifo", "setuid", "setgid-dir", "control-char"],
)
def test_pack_refuses(
    app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path, prepare: object, message: str
) -> None:
    prepare(app_dir)  # type: ignore[operator]
    out = tmp_path / "out.pkg"
    with pytest.raises(PackageError, match=message):
        pack_directory(app_dir, out, key)
    assert not out.exists()


def test_pack_refuses_device_files(app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    try:
        os.mknod(app_dir / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD, which this runner lacks")
    with pytest.raises(PackageError, match="is a device file"):
        pack_directory(app_dir, tmp_path / "out.pkg", key)


def test_pack_refuses_missing_manifest(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match=r"grainhouse\.json is missing"):
        pack_directory(tmp_path / "empty", tmp_path / "o.pkg", key)


def test_pack_refuses_symlink_chain_leaving_dir(
    app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("s")
    (app_dir / "hop").symlink_to("static/../..")  # lexically inside? no: realpath is outside
    with pytest.raises(PackageError, match="symlink points outside DIR"):
        pack_directory(app_dir, tmp_path / "o.pkg", key)


def test_caps_apply_when_packing(app_dir: Path, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    with pytest.raises(PackageError) as err:
        pack_directory(app_dir, tmp_path / "o.pkg", key, Caps(max_entries=2))
    assert err.value.kind == "too_large"
