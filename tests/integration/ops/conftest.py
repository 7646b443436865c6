"""A whole platform (as `grainhouse up` starts it) and a real Prometheus scraping it.

The stack itself is tests/support/stack.py, shared with the other platform test packages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.support import stack as support
from tests.support.ports import free_port
from tests.support.stack import Stack

__all__ = ["Stack"]

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SERVICES = ("auth", "grainmgr", "backup", "frontend")


def make_data_root() -> Path:
    return support.make_data_root("gh-ops-")


class Prometheus:
    """A real `prometheus` server on a free port with its own temporary storage."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.output = root / "prometheus.log"
        # Same job names and rule files as deploy/, only faster intervals and local targets.
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", root / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": f"grainhouse-{svc}",
                    "metrics_path": urllib.parse.urlsplit(url).path,
                    "static_configs": [{"targets": [urllib.parse.urlsplit(url).netloc]}],
                }
                for svc, url in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus missing: apt-get install prometheus (tools/system-deps.sh)")
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=/nonexistent",
                "--web.console.libraries=/nonexistent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._out,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.output.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.output.read_text()}")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with support.running_stack(prefix="gh-ops-") as s:
        yield s


@pytest.fixture(scope="session")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    services = stack.status()["services"]
    targets = {svc: services[svc]["metrics"] for svc in SERVICES}
    root = Path(tempfile.mkdtemp(prefix="gh-prom-", dir="/tmp"))
    prom = Prometheus(root, targets)
    try:
        prom.start()
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll `check()` until it returns something truthy; no timing assertions."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout}s (last: {last!r})")
