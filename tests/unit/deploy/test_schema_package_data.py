"""grain.capnp ships inside the grainmgr package, so a non-editable install (the image) works.

The schema's one file lives in services/grainmgr/grainhouse_grainmgr/schema/ (setuptools packages
it as data and control.schema_path() loads it); proto/grain.capnp is a symlink to it, so the
contracts folder still shows every schema and there is no second copy to drift.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grainhouse_grainmgr import control
from tests.unit.deploy.conftest import ROOT

pytestmark = pytest.mark.unit

PROTO = ROOT / "proto" / "grain.capnp"
COPY = ROOT / "services" / "grainmgr" / "grainhouse_grainmgr" / "schema" / "grain.capnp"


def test_proto_grain_capnp_is_the_packaged_file() -> None:
    assert PROTO.is_symlink()
    assert PROTO.resolve() == COPY.resolve()
    assert not COPY.is_symlink()


def test_schema_path_is_the_packaged_copy_and_holds_nothing_else() -> None:
    path = control.schema_path()
    assert path.is_file()
    assert path.resolve() == COPY.resolve()
    # The directory is mounted read-only into every grain: only the schema may be in it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["grain.capnp"]


def test_a_built_wheel_contains_the_schema_and_finds_it_when_installed(tmp_path: Path) -> None:
    # Build from a copy: setuptools builds in the source tree and would leave build/ there.
    src = tmp_path / "grainmgr"
    shutil.copytree(
        ROOT / "services" / "grainmgr",
        src,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    out = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            str(src),
            "-w",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("grainhouse_grainmgr-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "grainhouse_grainmgr/schema/grain.capnp" in names
        assert zf.read("grainhouse_grainmgr/schema/grain.capnp") == PROTO.read_bytes()
        # An install is the wheel unpacked: put only this package on the path (no checkout
        # around it) and ask it where the schema is.
        site = tmp_path / "site"
        zf.extractall(site)
    probe = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "import grainhouse_grainmgr.control as c; p = c.schema_path();"
            "print(p); assert p.is_file(), p",
            str(site),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert probe.stdout.strip() == str((site / "grainhouse_grainmgr/schema/grain.capnp").resolve())
