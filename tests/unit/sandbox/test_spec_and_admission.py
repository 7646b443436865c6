"""Spawn request shape checks and the host path policy, without any sandbox."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from grainhouse_grainmgr import admission
from grainhouse_grainmgr.spec import CHILD_PID_ENV, Limits, SandboxError, SpawnSpec
from tests.support.spawn_specs import spawn_spec

pytestmark = pytest.mark.unit


good = spawn_spec


def test_a_good_spec_is_admitted(tmp_path: Path) -> None:
    admission.check_spec(good(tmp_path), (str(tmp_path),))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"grain_id": "../x"}, "grain_id must match"),
        ({"grain_id": "x" * 65}, "grain_id must match"),
        ({"argv": []}, "argv must be a non-empty list"),
        ({"argv": ["run"]}, "argv[0] must be an absolute path"),
        ({"env": {"A=B": "1"}}, "env must map names"),
        ({"var_dir": "relative"}, "var_dir must be an absolute host path"),
        ({"pass_fds": tuple(range(20))}, "at most 16 fds"),
        ({"limits": Limits(nofile=3)}, "limits.nofile must be at least 16"),
        ({"limits": Limits(pids=-1)}, "limits.pids must be a non-negative integer"),
        ({"child_argv": ["server"]}, "child_argv[0] must be an absolute path"),
        ({"child_argv": ["/opt/app/a\0b"]}, "child_argv must be a list of strings"),
        ({"child_argv": "/opt/app/server"}, "child_argv must be a list of strings"),
        ({"child_env": {"A=B": "1"}}, "child_env must map names"),
        ({"child_env": {"A": 1}}, "child_env must map names"),
        # The launcher alone says where the child is; a spec cannot forge it.
        ({"env": {CHILD_PID_ENV: "7"}}, f"env must not set {CHILD_PID_ENV}"),
        ({"bridge_in_process": "yes"}, "bridge_in_process must be true or false"),
    ],
)
def test_malformed_specs_are_invalid(
    tmp_path: Path, changes: dict[str, object], fragment: str
) -> None:
    with pytest.raises(SandboxError) as info:
        good(tmp_path, **changes).check()
    assert info.value.kind == "invalid"
    assert fragment in info.value.message


def test_wire_round_trip_rechecks(tmp_path: Path) -> None:
    spec = good(tmp_path, pass_fds=(7, 8))
    wire = spec.to_wire()
    assert wire["nfds"] == 2 and "pass_fds" not in wire
    assert SpawnSpec.from_wire(wire) == good(tmp_path)
    # The bridge-in-process choice travels (the fork server's init acts on it).
    inproc = good(tmp_path, bridge_in_process=True).to_wire()
    assert SpawnSpec.from_wire(inproc).bridge_in_process is True
    assert SpawnSpec.from_wire(wire).bridge_in_process is False
    wire["argv"] = ["x"]
    with pytest.raises(SandboxError, match="absolute"):
        SpawnSpec.from_wire(wire)
    with pytest.raises(SandboxError, match="malformed spawn request"):
        SpawnSpec.from_wire({"grain_id": "x"})


def test_root_prefix_is_not_a_sibling(tmp_path: Path) -> None:
    # /a/grains must not admit /a/grains-evil.
    root = tmp_path / "grains"
    root.mkdir()
    evil = tmp_path / "grains-evil"
    evil.mkdir()
    with pytest.raises(SandboxError, match="outside the grain roots"):
        admission.check_host_dir("var_dir", str(evil), (str(root),))


def test_symlink_component_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SandboxError, match="goes through a symlink"):
        admission.check_host_dir("var_dir", str(tmp_path / "link"), (str(tmp_path),))


def test_package_scan(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "a" / "b").mkdir(parents=True)
    (pkg / "a" / "b" / "ok").symlink_to("../../a")  # stays inside: fine
    admission.scan_tree("package_dir", str(pkg), package=True)
    os.mkfifo(pkg / "a" / "fifo")
    with pytest.raises(SandboxError, match="is not a file or directory"):
        admission.scan_tree("package_dir", str(pkg), package=True)
    admission.scan_tree("var_dir", str(pkg), package=False)  # storage may hold a fifo
    os.unlink(pkg / "a" / "fifo")
    (pkg / "a" / "sgid").mkdir()
    (pkg / "a" / "sgid").chmod(0o755 | stat.S_ISGID)
    with pytest.raises(SandboxError, match="has a set-id bit"):
        admission.scan_tree("package_dir", str(pkg), package=True)


def test_log_path_must_be_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with pytest.raises(SandboxError, match="exists and is not a regular file"):
        admission.check_log_path(str(tmp_path / "log"), (str(tmp_path),))
    with pytest.raises(SandboxError, match="does not exist"):
        admission.check_log_path(str(tmp_path / "nodir" / "log"), (str(tmp_path),))


def test_error_kinds_are_closed() -> None:
    assert SandboxError("weird", "x").kind == "internal"
    assert SandboxError("invalid", "bad field").message == "bad field"
