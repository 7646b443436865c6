"""Installing a package: safe extraction into a temporary directory, then one atomic rename.

Owns: the on-disk layout of an installed package::

    <packages_root>/<package_id>/package.json   app id, package id and canonical manifest
    <packages_root>/<package_id>/files/          the app's files (mounted read-only at /opt/app)

and the temporary directories ``<packages_root>/.tmp-*`` it creates and always removes.
Trusts: `package` for header and signature, `archive` for entry validation; the packages root
itself (grainmgr's own directory).
Never: writes outside its temporary directory before the final rename; follows a symlink
while writing; leaves a partly unpacked package or a temporary directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grainhouse_package import archive
from grainhouse_package.caps import Caps
from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import Manifest, manifest_from_dict, to_json
from grainhouse_package.package import Source, check_header, open_source, read_checked_payload

METADATA_FILE = "package.json"
TEMP_PREFIX = ".tmp-"
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class InstalledPackage:
    """A package unpacked, read-only, at `path`."""

    app_id: str
    package_id: str
    manifest: Manifest
    path: Path
    #: False when an identical package was already installed (install is idempotent).
    newly_installed: bool

    @property
    def files_dir(self) -> Path:
        """The directory a grain sees as /opt/app."""
        return self.path / archive.FILES_DIR


def install_package(
    source: Source,
    packages_root: Path,
    caps: Caps = Caps(),  # noqa: B008
) -> InstalledPackage:
    """Verify `source` and unpack it to ``packages_root/<package_id>`` atomically.

    Idempotent: installing an identical package again returns the existing one. On any
    failure nothing is left under `packages_root`. Version policy is the caller's job
    (see `check_upgrade`), since only the caller knows what is installed for the app id.
    """
    if not packages_root.is_dir():
        raise PackageError("not_found", f"packages root {packages_root} is not a directory")
    with open_source(source, caps) as f:
        checked = check_header(f, caps)
        final = packages_root / checked.package_id
        if final.exists():
            return load_installed(final)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=packages_root))
        try:
            sink = _DirectorySink(tmp)
            summary = read_checked_payload(f, checked, caps, sink)
            sink.ensure_files_dir()
            meta = {
                "app_id": checked.header.app_id,
                "package_id": checked.package_id,
                "manifest": summary.manifest.to_dict(),
            }
            _write_new(tmp / METADATA_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
            _make_read_only(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():  # an identical install raced us and won
                    remove_tree(tmp)
                    return load_installed(final)
                raise
            _fsync_dir(packages_root)
        except OSError as exc:
            remove_tree(tmp)
            raise PackageError("internal", f"cannot unpack package: {exc}") from exc
        except BaseException:
            remove_tree(tmp)
            raise
    return InstalledPackage(
        app_id=checked.header.app_id,
        package_id=checked.package_id,
        manifest=summary.manifest,
        path=final,
        newly_installed=True,
    )


def load_installed(path: Path) -> InstalledPackage:
    """Read back a package directory written by `install_package`."""
    try:
        meta = json.loads((path / METADATA_FILE).read_bytes())
        manifest = manifest_from_dict(meta["manifest"])
        # Round trip through the canonical form: a hand-edited package.json is refused.
        if json.loads(to_json(manifest)) != meta["manifest"]:
            raise PackageError("internal", f"{path}: package.json does not match its manifest")
        return InstalledPackage(
            app_id=str(meta["app_id"]),
            package_id=str(meta["package_id"]),
            manifest=manifest,
            path=path,
            newly_installed=False,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackageError("internal", f"{path}: installed package is unreadable: {exc}") from exc


def remove_package(packages_root: Path, package_id: str) -> None:
    """Delete an installed package (its directories are read-only, so rmtree alone fails)."""
    if not package_id.isalnum() or len(package_id) != 64:
        raise PackageError("invalid", f"not a package id: {package_id[:80]!r}")
    target = packages_root / package_id
    if not target.exists():
        raise PackageError("not_found", f"package {package_id} is not installed")
    remove_tree(target)


def remove_tree(path: Path) -> None:
    """rmtree that first makes read-only directories writable (never following symlinks)."""
    if not path.exists() and not path.is_symlink():
        return
    for dirpath, dirnames, _files in os.walk(path, followlinks=False):
        os.chmod(dirpath, 0o700)
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


class _DirectorySink:
    """Writes validated entries under `root`; every path was checked by archive first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.executables: set[Path] = set()

    def _target(self, path: str) -> Path:
        target = self.root / path
        # Parents were validated as directories (never symlinks) by the archive reader;
        # entries may omit their parent directories, so create them here.
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return target

    def directory(self, path: str) -> None:
        target = self._target(path)
        if not target.is_dir() or target.is_symlink():
            target.mkdir(mode=0o700)

    def file(self, path: str, executable: bool, chunks: Iterator[bytes]) -> None:
        target = self._target(path)
        fd = os.open(target, _OPEN_NEW, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        if executable:
            self.executables.add(target)

    def symlink(self, path: str, target: str) -> None:
        os.symlink(target, self._target(path))

    def ensure_files_dir(self) -> None:
        (self.root / archive.FILES_DIR).mkdir(mode=0o700, exist_ok=True)
        for exe in self.executables:
            os.chmod(exe, 0o500)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, _OPEN_NEW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _make_read_only(root: Path) -> None:
    """Files 0444 (0555 if executable), directories 0555: an installed package is immutable."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue  # symlink permissions mean nothing on Linux
            os.chmod(p, 0o555 if st.st_mode & 0o100 else 0o444)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                # World-readable on purpose: in root mode each grain runs as its own uid.
                os.chmod(p, 0o555)  # noqa: S103
    os.chmod(root, 0o555)  # noqa: S103


def _fsync_dir(path: Path) -> None:
    # The rename is the commit point; make it durable before reporting success.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
