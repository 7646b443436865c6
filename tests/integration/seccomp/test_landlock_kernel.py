"""The Landlock wall in a real kernel: a child confined by `restrict` can use the trees it was
given and nothing else, while the same child without `restrict` (the control) can."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grainhouse_grainmgr import landlock

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(landlock.abi_version() == 0, reason="this kernel has no Landlock"),
]

# Everything the child needs is imported before `restrict`: afterwards it may not read the
# standard library any more (that is the point).
CHILD = """
import errno, json, os, subprocess, sys
from grainhouse_grainmgr import landlock
ro, rw, outside, apply = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
preopened = os.open(os.path.join(outside, "file"), os.O_RDONLY)
applied = landlock.restrict([ro], [rw, "/dev/null"]) if apply else None

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def read(path):
    with open(path) as f:
        f.read()

def write(path):
    with open(path, "w") as f:
        f.write("x")

results = {
    "applied": applied,
    "read_ro": attempt(lambda: read(os.path.join(ro, "file"))),
    "list_ro": attempt(lambda: os.listdir(ro)),
    "create_in_ro": attempt(lambda: write(os.path.join(ro, "new"))),
    "overwrite_ro": attempt(lambda: write(os.path.join(ro, "file"))),
    "unlink_in_ro": attempt(lambda: os.unlink(os.path.join(ro, "file"))),
    "create_in_rw": attempt(lambda: write(os.path.join(rw, "new"))),
    "read_rw": attempt(lambda: read(os.path.join(rw, "new"))),
    "mkdir_in_rw": attempt(lambda: os.mkdir(os.path.join(rw, "dir"))),
    "rename_in_rw": attempt(lambda: os.rename(os.path.join(rw, "new"),
                                              os.path.join(rw, "dir", "moved"))),
    "unlink_in_rw": attempt(lambda: os.unlink(os.path.join(rw, "dir", "moved"))),
    "write_dev_null": attempt(lambda: write("/dev/null")),
    "read_outside": attempt(lambda: read(os.path.join(outside, "file"))),
    "create_outside": attempt(lambda: write(os.path.join(outside, "new"))),
    "list_outside": attempt(lambda: os.listdir(outside)),
    "read_etc_passwd": attempt(lambda: read("/etc/passwd")),
    "exec_bin_true": attempt(lambda: subprocess.run(["/bin/true"], check=True)),
    "preopened_still_reads": attempt(lambda: os.read(preopened, 10)),
    "signal_parent": attempt(lambda: os.kill(os.getppid(), 0)),
}
print(json.dumps(results))
"""


def make_trees(tmp_path: Path) -> tuple[Path, Path, Path]:
    trees = []
    for name in ("ro", "rw", "outside"):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "file").write_text(f"{name} data")
        trees.append(tree)
    return trees[0], trees[1], trees[2]


def run_child(tmp_path: Path, apply: bool) -> dict[str, object]:
    ro, rw, outside = make_trees(tmp_path)
    argv = [sys.executable, "-c", CHILD, str(ro), str(rw), str(outside), "1" if apply else "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results: dict[str, object] = json.loads(done.stdout)
    return results


ALLOWED_INSIDE = [
    "read_ro",
    "list_ro",
    "create_in_rw",
    "read_rw",
    "mkdir_in_rw",
    "rename_in_rw",
    "unlink_in_rw",
    "write_dev_null",
    "preopened_still_reads",
]
REFUSED_OUTSIDE = [
    "create_in_ro",
    "overwrite_ro",
    "unlink_in_ro",
    "read_outside",
    "create_outside",
    "list_outside",
    "read_etc_passwd",
    "exec_bin_true",
]


def test_restricted_child_reaches_only_its_trees(tmp_path: Path) -> None:
    got = run_child(tmp_path, apply=True)
    assert got["applied"] is True
    for name in ALLOWED_INSIDE:
        assert got[name] == "ok", name
    for name in REFUSED_OUTSIDE:
        assert got[name] == "EACCES", name
    if landlock.abi_version() >= 6:
        assert got["signal_parent"] == "EPERM"  # signal scoping


def test_control_without_restrict_reaches_everything(tmp_path: Path) -> None:
    got = run_child(tmp_path, apply=False)
    assert got["applied"] is None
    for name in (*ALLOWED_INSIDE, *REFUSED_OUTSIDE, "signal_parent"):
        assert got[name] == "ok", name


def test_a_missing_path_raises_instead_of_weakening_the_wall(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom grainhouse_grainmgr import landlock\n"
        "try:\n    landlock.restrict([sys.argv[1]], [])\n"
        "except OSError as exc:\n    print(exc.errno)\n"
    )
    missing = str(tmp_path / "no-such-dir")
    done = subprocess.run([sys.executable, "-c", script, missing], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(errno.ENOENT)


def test_rights_follow_the_abi() -> None:
    abi = landlock.abi_version()
    rights = landlock.handled_fs_rights(abi)
    assert rights & landlock.READ_FILE and rights & landlock.WRITE_FILE
    assert bool(rights & landlock.REFER) == (abi >= 2)
    assert bool(rights & landlock.TRUNCATE) == (abi >= 3)
    assert bool(rights & landlock.IOCTL_DEV) == (abi >= 5)


# The launcher's order: Landlock on the final tree, then the seccomp filter, then exec.
SANDBOX_ORDER = """
import os, sys
from grainhouse_grainmgr import landlock, seccomp_compiler, seccomp_loader
ro, rw, outside = sys.argv[1:4]
program = seccomp_compiler.compile_filter()
runtime = [p for p in ("/usr", "/bin", "/lib", "/lib64") if os.path.exists(p)]
assert landlock.restrict([ro, *runtime], [rw, "/dev/null"])
seccomp_loader.install_filter(program)
os.execv("/bin/sh", ["sh", "-c",
    f"cat {ro}/file > {rw}/copy && cat {outside}/file 2>/dev/null; echo rc=$?"])
"""


def test_landlock_then_seccomp_then_exec(tmp_path: Path) -> None:
    ro, rw, outside = make_trees(tmp_path)
    argv = [sys.executable, "-c", SANDBOX_ORDER, str(ro), str(rw), str(outside)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (rw / "copy").read_text() == "ro data"
    assert done.stdout.strip() == "rc=1"  # cat could not open the file outside
    assert os.listdir(outside) == ["file"]
