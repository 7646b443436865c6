"""The spawn request's child program fields, and the fork server's memory of clean packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grainhouse_grainmgr import admission
from grainhouse_grainmgr.spec import SandboxError, SpawnSpec
from tests.support.spawn_specs import spawn_spec

pytestmark = pytest.mark.unit


def spec(tmp_path: Path, **changes: object) -> SpawnSpec:
    """A valid spec with a child program (the app, as grainmgr sends it)."""
    child: dict[str, object] = {
        "child_argv": ["/opt/app/server", "--port", "8000"],
        "child_env": {"PORT": "8000"},
    }
    return spawn_spec(tmp_path, **{**child, **changes})


def test_the_child_travels_over_the_wire(tmp_path: Path) -> None:
    sent = spec(tmp_path)
    got = SpawnSpec.from_wire(sent.to_wire())
    assert (got.child_argv, got.child_env) == (sent.child_argv, sent.child_env)
    # A request without the fields (an older grainmgr) still means "no child".
    wire = spec(tmp_path, child_argv=[], child_env={}).to_wire()
    del wire["child_argv"], wire["child_env"]
    assert SpawnSpec.from_wire(wire).child_argv == []


def test_a_clean_package_is_scanned_once_until_it_is_replaced(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "lib" / "mod.py").write_text("x = 1\n")
    clean = admission.CleanPackages()
    roots = (str(tmp_path),)
    admission.check_spec(spec(tmp_path), roots, clean)
    # Deep inside, a set-id file appears: the tree is remembered as clean (installed packages
    # never change: grainmgr writes them read-only, under a name that is their hash)...
    bad = pkg / "lib" / "suid"
    bad.write_text("")
    bad.chmod(0o4755)
    admission.check_spec(spec(tmp_path), roots, clean)
    # ...while a scan without the memory (and any fork server after a restart) refuses it.
    with pytest.raises(SandboxError, match="set-id bit"):
        admission.check_spec(spec(tmp_path), roots)
    # A package directory replaced at the same path (removed and installed again) is a new
    # tree: scanned again.
    os.rename(pkg, tmp_path / "old")
    (pkg / "lib").mkdir(parents=True)
    (pkg / "lib" / "suid").write_text("")
    (pkg / "lib" / "suid").chmod(0o4755)
    with pytest.raises(SandboxError, match="set-id bit"):
        admission.check_spec(spec(tmp_path), roots, clean)


def test_a_refused_package_is_not_remembered_and_storage_is_always_scanned(
    tmp_path: Path,
) -> None:
    clean = admission.CleanPackages()
    roots = (str(tmp_path),)
    grain = spec(tmp_path)
    fifo = Path(grain.package_dir) / "pipe"
    os.mkfifo(fifo)
    for _ in range(2):
        with pytest.raises(SandboxError, match="not a file or directory"):
            admission.check_spec(grain, roots, clean)
    fifo.unlink()
    admission.check_spec(grain, roots, clean)
    # The grain writes its storage: it is walked at every start, memory or not.
    os.symlink("/etc/passwd", Path(grain.var_dir) / "escape")
    with pytest.raises(SandboxError, match="absolute path"):
        admission.check_spec(grain, roots, clean)


def test_the_memory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission.CleanPackages, "MAX", 2)
    clean = admission.CleanPackages()
    for i in range(5):
        tree = tmp_path / f"p{i}"
        tree.mkdir()
        clean.scan(str(tree))
    assert len(clean._clean) <= 2
    assert str(tmp_path / "p4") in clean._clean  # the newest is remembered
