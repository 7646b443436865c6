"""A whole platform started the way `make run` starts it, on free ports in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

GRAINHOUSE = str(Path(sys.executable).parent / "grainhouse")


def make_data_root() -> Path:
    # PostgreSQL runs as the `postgres` user when we are root: it must be able to enter
    # the directory, which pytest's 0700 tmp_path does not allow.
    root = Path(tempfile.mkdtemp(prefix="gh-test-", dir="/tmp"))
    root.chmod(0o711)
    return root


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "var"
        self.output = root / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
        self.proc = subprocess.Popen(
            [GRAINHOUSE, "up", "--data-dir", str(self.data_dir), "--http-port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=self._out,
            env=env,
            start_new_session=True,
        )
        self.wait_for_line("Grainhouse is ready at", timeout)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"grainhouse up exited early:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def status(self) -> dict[str, Any]:
        proc = subprocess.run(
            [GRAINHOUSE, "status", "--data-dir", str(self.data_dir), "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return json.loads(proc.stdout)

    def services(self) -> dict[str, Any]:
        return self.status()["services"]

    def wait_all_healthy(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.services()
            if all(s["healthy"] for s in last.values()):
                return last
            time.sleep(0.3)
        raise AssertionError(f"not all healthy: {last}\n{self.log()}")

    def stop(self) -> int:
        try:
            return self._stop()
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None

    def _stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = make_data_root()
    s = Stack(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_root() -> Iterator[Path]:
    root = make_data_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)
