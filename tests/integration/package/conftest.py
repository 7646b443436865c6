"""Fixtures for the example apps: stacks built once per test run (shared by xdist workers),
packed, installed, and run on the host with Debian's /usr/bin/python3.

There is no sandbox here (grainmgr's job): the tests map the grain paths of a manifest
(/opt/app -> the installed files directory, /var -> a temp directory) and run its command.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import InstalledPackage, Manifest, install_package, pack_directory
from grainhouse_package.stack import PythonStack, build_python_stack

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
GRAIN_PYTHON = "/usr/bin/python3"


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under xdist each worker has its own basetemp; their parent is common to the run.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / "grainhouse-stacks"


@pytest.fixture(scope="session")
def stacks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """notes/ and third-party/ built with the Python stack, once per run (needs PyPI)."""
    shared = _shared_dir(tmp_path_factory)
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in ("notes", "third-party"):
            out = shared / name
            if (out / ".built").exists():
                continue
            shutil.rmtree(out, ignore_errors=True)
            if name == "third-party":
                # Through the CLI, as an author would.
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "grainhouse_cli.app_commands",
                        "stack",
                        "python",
                        str(EXAMPLES / name),
                        "-o",
                        str(out),
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                assert json.loads(done.stdout)["title"] == "Radicale"
            else:
                build_python_stack(PythonStack(source_dir=EXAMPLES / name), out)
            (out / ".built").write_text("ok")
    return shared


@pytest.fixture(scope="session")
def author_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pack_and_install(source: Path, key: Ed25519PrivateKey, work: Path) -> InstalledPackage:
    pkg = work / f"{source.name}.pkg"
    pack_directory(source, pkg, key, level=1)  # fast: the tests are about content, not size
    root = work / "packages"
    root.mkdir(exist_ok=True)
    return install_package(pkg, root)


def host_command(
    manifest: Manifest, files_dir: Path, port: int, extra: list[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The manifest's continue command and env with grain paths mapped to host paths."""

    def on_host(value: str) -> str:
        return value.replace("/opt/app", str(files_dir))

    argv = [on_host(a) for a in manifest.continue_command]
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    env = {k: on_host(v) for k, v in manifest.env.items()}
    return argv + (extra or []), env


@pytest.fixture
def run_app() -> Iterator[object]:
    """run_app(argv, env, port, log) starts a child and waits until it accepts connections."""
    children: list[subprocess.Popen[bytes]] = []

    def _run(argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        assert argv[0] == GRAIN_PYTHON
        with open(log, "wb") as out:
            child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        children.append(child)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail(f"app exited with {child.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"app never listened on {port}: {log.read_text()[-2000:]}")

    yield _run
    for child in children:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
