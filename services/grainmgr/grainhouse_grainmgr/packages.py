"""Installed packages: upload spooling, verification, install, listing and removal.

Owns: `<data_dir>/grainmgr/packages/` (through the package library) and the upload spool
`<data_dir>/grainmgr/uploads/`; the `packages` rows (through store.py).
Trusts: grainhouse_package for every check of a package's bytes; nothing an uploader claims
(size and hash are compared with the bytes received).
Never: installs a package that failed verification; leaves a spooled upload behind; removes
a package that grains use unless told to (force).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_grainmgr.store import PackageRow, Store
from grainhouse_package import (
    Caps,
    InstalledPackage,
    Manifest,
    PackageError,
    check_upgrade,
    install_package,
    load_installed,
    remove_package,
    verify_package,
)

MAX_CHUNK = 1024 * 1024

_KINDS = {
    "invalid": Kind.INVALID,
    "conflict": Kind.CONFLICT,
    "too_large": Kind.TOO_LARGE,
    "not_found": Kind.NOT_FOUND,
    "internal": Kind.INTERNAL,
}


def package_error(exc: PackageError) -> GrainhouseError:
    """The package library's refusal, as the error the gRPC edge maps (message kept)."""
    return GrainhouseError(_KINDS.get(exc.kind, Kind.INTERNAL), exc.message)


@dataclass(frozen=True)
class Upload:
    """What the uploader said before the bytes."""

    size_bytes: int
    sha256: str
    allow_downgrade: bool


@dataclass(frozen=True)
class InstallResult:
    row: PackageRow
    upgraded: bool
    already_installed: bool


def view_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """Roles and permissions of a manifest (its JSON form) in grain.capnp ViewInfo shape."""
    default = manifest.get("default_share_role")
    return {
        "permissions": [
            {"name": p["name"], "title": p["title"], "description": ""}
            for p in manifest.get("permissions", [])
        ],
        "roles": [
            {
                "name": r["name"],
                "title": r["title"],
                "verbPhrase": "",
                "permissions": list(r["permissions"]),
                "isDefault": r["name"] == default,
                "obsolete": False,
            }
            for r in manifest.get("roles", [])
        ],
    }


class Packages:
    def __init__(self, store: Store, root: Path, max_package_bytes: int) -> None:
        self.store = store
        self.root = root / "packages"
        self.uploads = root / "uploads"
        self.max_package_bytes = max_package_bytes
        self.caps = Caps(max_package_bytes=max_package_bytes)
        self._install_lock = asyncio.Lock()
        for d in (self.root, self.uploads):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o711)

    def files_dir(self, package_id: str) -> Path:
        return self.root / package_id / "files"

    def installed(self, package_id: str) -> InstalledPackage:
        try:
            return load_installed(self.root / package_id)
        except PackageError as exc:
            raise package_error(exc) from exc

    # -- install ------------------------------------------------------------------------------

    async def install(self, upload: Upload, chunks: AsyncIterator[bytes]) -> InstallResult:
        if upload.size_bytes <= 0:
            raise GrainhouseError(Kind.INVALID, "metadata.size_bytes is required (> 0)")
        if upload.size_bytes > self.max_package_bytes:
            raise GrainhouseError(
                Kind.TOO_LARGE,
                f"package of {upload.size_bytes} bytes is above the limit of "
                f"{self.max_package_bytes} bytes",
            )
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.uploads)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = hashlib.sha256()
                received = 0
                async for chunk in chunks:
                    if not chunk or len(chunk) > MAX_CHUNK:
                        raise GrainhouseError(Kind.INVALID, "a chunk must be 1 byte to 1 MiB")
                    received += len(chunk)
                    if received > upload.size_bytes:
                        raise GrainhouseError(
                            Kind.INVALID, "the chunks add up to more than metadata.size_bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            if received != upload.size_bytes:
                raise GrainhouseError(
                    Kind.INVALID,
                    f"the chunks add up to {received} bytes, not metadata.size_bytes "
                    f"{upload.size_bytes}",
                )
            if upload.sha256 and upload.sha256.lower() != digest.hexdigest():
                raise GrainhouseError(Kind.INVALID, "upload corrupted: sha256 does not match")
            # One install at a time: the version rules compare against what is installed.
            async with self._install_lock:
                return await self._install_file(path, upload.allow_downgrade)
        finally:
            path.unlink(missing_ok=True)

    async def _install_file(self, path: Path, allow_downgrade: bool) -> InstallResult:
        try:
            verified = await asyncio.to_thread(verify_package, path, self.caps)
        except PackageError as exc:
            raise package_error(exc) from exc
        existing = await self.store.get_package(verified.package_id)
        if existing is not None and (self.root / verified.package_id).is_dir():
            return InstallResult(existing, upgraded=False, already_installed=True)
        current = await self.store.current_package(verified.app_id)
        upgraded = False
        if current is not None:
            installed: Manifest = self.installed(current.package_id).manifest
            candidate = verified.manifest
            if candidate.version == installed.version:
                raise GrainhouseError(
                    Kind.CONFLICT,
                    f"{candidate.title} version {candidate.version} is already installed "
                    "from different bytes; give the new build a higher version",
                )
            if candidate.version < installed.version and not allow_downgrade:
                try:
                    check_upgrade(installed, candidate)
                except PackageError as exc:
                    raise package_error(exc) from exc
            if candidate.version > installed.version:
                try:
                    check_upgrade(installed, candidate)
                except PackageError as exc:
                    raise package_error(exc) from exc
                upgraded = True
        try:
            done = await asyncio.to_thread(install_package, path, self.root, self.caps)
        except PackageError as exc:
            raise package_error(exc) from exc
        manifest = done.manifest
        await self.store.add_package(
            done.package_id,
            done.app_id,
            manifest.version,
            manifest.title,
            manifest.marketing_version,
            manifest.to_dict(),
            verified.unpacked_bytes,
        )
        row = await self.store.get_package(done.package_id)
        assert row is not None
        return InstallResult(row, upgraded=upgraded, already_installed=False)

    # -- read and remove ----------------------------------------------------------------------

    async def get(self, package_id: str) -> PackageRow:
        if not package_id:
            raise GrainhouseError(Kind.INVALID, "package_id is required")
        row = await self.store.get_package(package_id)
        if row is None:
            raise GrainhouseError(Kind.NOT_FOUND, "no such package")
        return row

    async def uninstall(self, package_id: str, force: bool) -> int:
        row = await self.get(package_id)
        if row.grain_count > 0 and not force:
            raise GrainhouseError(
                Kind.CONFLICT, f"{row.grain_count} grain(s) use this package; use force"
            )
        orphaned = await self.store.delete_package(package_id, orphan_grains=force)
        try:
            await asyncio.to_thread(remove_package, self.root, package_id)
        except PackageError as exc:
            if exc.kind != "not_found":
                raise package_error(exc) from exc
        return orphaned
