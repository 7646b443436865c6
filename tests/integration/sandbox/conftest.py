"""Fixtures for the sandbox tests: one fork server per mode per session, grain directories.

The root-mode launcher runs as root (as grainmgr does in CI); the unprivileged one is started
by root but runs the fork server as uid/gid 65534 on Debian's /usr/bin/python3 (the venv's
interpreter lives under /root, which nobody can read), so it proves user namespaces alone
suffice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grainhouse_grainmgr import probe, syscall_probe
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings

NOBODY = (65534, 65534)
PROBE_SOURCES = (Path(probe.__file__), Path(syscall_probe.__file__))


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("sandbox integration tests start launchers as root and as uid 65534")


@dataclass
class Site:
    """A grain root (the launcher's allowed root) and the launcher serving it."""

    mode: str
    root: Path
    launcher: Launcher
    owner: tuple[int, int] | None  # who must own grain dirs (unprivileged mode)

    def grain_dirs(self, name: str, *, probe_files: bool = False) -> tuple[Path, Path, Path]:
        base = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        pkg, var = base / "pkg", base / "var"
        pkg.mkdir(parents=True)
        var.mkdir()
        if probe_files:
            for source in PROBE_SOURCES:
                shutil.copy(source, pkg / source.name)
        if self.owner:
            for path in (base, pkg, var, *pkg.iterdir()):
                os.chown(path, *self.owner)
        return pkg, var, base / "log"


def _site(mode: str) -> Iterator[Site]:
    _needs_root()
    root = Path(tempfile.mkdtemp(prefix=f"gh-sandbox-{mode}-"))
    os.chmod(root, 0o755)
    owner = NOBODY if mode == "unprivileged" else None
    if owner:
        os.chown(root, *owner)
    settings = LauncherSettings(
        allowed_roots=(str(root),),
        cgroup_name=f"grainhouse-test-{uuid.uuid4().hex[:8]}",
        quota_interval=0.2,
        python="/usr/bin/python3" if owner else LauncherSettings.python,
        run_as=owner,
    )
    launcher = Launcher.start(settings)
    try:
        yield Site(mode, root, launcher, owner)
    finally:
        launcher.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def root_site() -> Iterator[Site]:
    yield from _site("root")


@pytest.fixture(scope="session")
def unprivileged_site() -> Iterator[Site]:
    yield from _site("unprivileged")


@pytest.fixture(scope="session", params=["root", "unprivileged"])
def site(request: pytest.FixtureRequest) -> Site:
    name = "root_site" if request.param == "root" else "unprivileged_site"
    return request.getfixturevalue(name)
