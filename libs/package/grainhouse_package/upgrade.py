"""The upgrade rule: which version of an app may replace which.

Owns: the version policy (strictly newer, and not below the candidate's minimum upgradable).
Trusts: manifests that `manifest.parse_manifest` already validated; the caller has checked that
both belong to the same app id (same signing key).
Never: touches disk or the database.
"""

from __future__ import annotations

from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import Manifest


def check_upgrade(installed: Manifest | None, candidate: Manifest) -> None:
    """Raise PackageError("conflict") unless `candidate` may replace `installed`."""
    if installed is None:
        return
    if candidate.version <= installed.version:
        raise PackageError(
            "conflict",
            f"{candidate.title} version {candidate.version} ({candidate.marketing_version}) is "
            f"not newer than the installed version {installed.version} "
            f"({installed.marketing_version}); downgrades and reinstalls are refused",
        )
    if installed.version < candidate.min_upgradable_version:
        raise PackageError(
            "conflict",
            f"{candidate.title} version {candidate.version} cannot upgrade the installed version "
            f"{installed.version}: it only upgrades from version "
            f"{candidate.min_upgradable_version} or later",
        )
