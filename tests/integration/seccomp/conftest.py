"""Fixtures that run small children with and without the grain seccomp filter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from grainhouse_grainmgr import seccomp_compiler

# Runs in a fresh interpreter: optionally load the filter, then run one probe and print JSON.
PROBE_CHILD = """
import json, sys
from grainhouse_grainmgr import seccomp_loader, syscall_probe
filter_path, name = sys.argv[1], sys.argv[2]
if filter_path != "-":
    with open(filter_path, "rb") as f:
        program = f.read()
    seccomp_loader.set_no_new_privs()
    seccomp_loader.install_filter(program)
print(json.dumps(syscall_probe.run([name])[name]))
"""

# Loads the filter, then execs the given command: the filter is inherited across exec.
EXEC_CHILD = """
import os, sys, time
from grainhouse_grainmgr import seccomp_loader
with open(sys.argv[1], "rb") as f:
    program = f.read()
seccomp_loader.set_no_new_privs()
started = time.perf_counter()
seccomp_loader.install_filter(program)
elapsed = time.perf_counter() - started
os.write(2, f"install_filter took {elapsed * 1e6:.0f} us\\n".encode())
os.execv(sys.argv[2], sys.argv[2:])
"""

ProbeRunner = Callable[[str, bool], dict[str, int]]
FilteredRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def filter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seccomp") / "grain.bpf"
    path.write_bytes(seccomp_compiler.compile_filter())
    return path


@pytest.fixture(scope="session")
def run_probe(filter_path: Path) -> ProbeRunner:
    """run_probe(name, filtered) -> {"ret": ..., "errno": ...} from a fresh child."""

    def run(name: str, filtered: bool) -> dict[str, int]:
        argv = [sys.executable, "-c", PROBE_CHILD, str(filter_path) if filtered else "-", name]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        result: dict[str, int] = json.loads(done.stdout)
        return result

    return run


@pytest.fixture(scope="session")
def run_filtered(filter_path: Path) -> FilteredRunner:
    """run_filtered(argv, **subprocess_kwargs): exec `argv` with the filter loaded."""

    def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        full = [sys.executable, "-c", EXEC_CHILD, str(filter_path), *argv]
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            full, capture_output=True, text=True, timeout=120, check=False, **kwargs
        )

    return run
