"""The whole platform started the way `make run` starts it, on free ports in a temp dir.

Shared by the integration and e2e test packages; each keeps its own fixtures (scope, env,
what they install) and uses this for the mechanics of `grainhouse up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

GRAINHOUSE = str(Path(sys.executable).parent / "grainhouse")
READY = "Grainhouse is ready at"


def make_data_root(prefix: str = "gh-test-") -> Path:
    # PostgreSQL runs as the `postgres` user when we are root: it must be able to enter
    # the directory, which pytest's 0700 tmp_path does not allow.
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o711)
    return root


class Stack:
    """`grainhouse up` as a child process; its stderr goes to `output` (appended to, so a
    stack can be stopped and started again on the same data directory)."""

    # Environment every stack of a subclass gets (before the constructor's `settings`).
    defaults: ClassVar[dict[str, str]] = {}

    def __init__(self, root: Path, settings: dict[str, str] | None = None) -> None:
        self.settings = {**self.defaults, **(settings or {})}
        self.root = root
        self.data_dir = root / "var"
        self.output = root / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.starts = 0
        self.url = ""

    def start(self, timeout: float = 120) -> None:
        ready_before = self.log().count(READY)  # the log is appended to: count ready lines
        self._out = open(self.output, "ab")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
        env.update(self.settings)
        self.proc = subprocess.Popen(
            [GRAINHOUSE, "up", "--data-dir", str(self.data_dir), "--http-port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=self._out,
            env=env,
            start_new_session=True,
        )
        self.starts += 1
        self.wait_for_line(READY, timeout, count=ready_before + 1)
        found = re.findall(re.escape(READY) + r" (\S+)", self.log())
        if found:
            self.url = found[-1].rstrip("/")

    def wait_for_line(self, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"grainhouse up exited early:\n{self.failure()}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.failure()}")

    def failure(self) -> str:
        """`up`'s output plus the end of every service log it points at: the data root is
        removed after a failed start, so this is all that is left to read."""
        out = self.log()
        for name in dict.fromkeys(re.findall(r"see (\S+\.log)", out)):
            with contextlib.suppress(OSError):
                tail = Path(name).read_text(errors="replace")[-4000:]
                out += f"\n--- end of {name} ---\n{tail}"
        return out

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [GRAINHOUSE, *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout

    def status(self) -> dict[str, Any]:
        proc = subprocess.run(
            [GRAINHOUSE, "status", "--data-dir", str(self.data_dir), "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return dict(json.loads(proc.stdout))

    def services(self) -> dict[str, Any]:
        return dict(self.status()["services"])

    def nats_url(self) -> str:
        return str(self.services()["nats"]["nats"])

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
        """SIGTERM (SIGKILL to the session after 60 s); the exit code, 0 if never started."""
        try:
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
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None


@contextlib.contextmanager
def running_stack(env: dict[str, str] | None = None, prefix: str = "gh-test-") -> Iterator[Stack]:
    """A started stack on a fresh data root; stopped and removed on the way out."""
    root = make_data_root(prefix)
    stack = Stack(root, env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


class ExtraFrontend:
    """One more `python -m grainhouse_frontend` beside a running stack's own: the same
    environment (public URL, wildcard host, auth, grainmgr, NATS) but its own HTTP and metrics
    listeners — two frontends behind a load balancer, the platform's scale-out shape. Its log
    goes to `<root>/frontend-<port>.log`."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = stack.root / f"frontend-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def _env(self) -> dict[str, str]:
        # The first frontend's own environment, as the supervisor planned it.
        pid = int(self.stack.services()["frontend"]["pid"])
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        # Its parent is the test, not the supervisor (a service exits when that pid is not its
        # parent); stop() ends it.
        env.pop("GRAINHOUSE_SUPERVISOR_PID", None)
        env["GRAINHOUSE_FRONTEND_LISTEN"] = f"127.0.0.1:{self.port}"
        env["GRAINHOUSE_FRONTEND_METRICS_LISTEN"] = f"127.0.0.1:{_free_port()}"
        return env

    def start(self, timeout: float = 60) -> None:
        import urllib.request

        self._out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grainhouse_frontend"],
            stdout=self._out,
            stderr=self._out,
            env=self._env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"the extra frontend exited:\n{self.log()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the extra frontend was not healthy within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None


def _free_port() -> int:
    try:  # below the ephemeral range, as the supervisor plans its own (tests/support/ports.py)
        from tests.support.ports import free_port
    except ImportError:  # pragma: no cover - an older tree without the port planner
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return free_port()
