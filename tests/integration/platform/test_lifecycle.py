"""Bring-up edge cases: clean stop, busy port, unwritable dir, bad settings, migrations."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from grainhouse_common import db

from .conftest import GRAINHOUSE, Stack

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not a running process.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigterm_stops_every_child_and_up_again_reuses_the_data(fresh_root: Path) -> None:
    s = Stack(fresh_root)
    s.start()
    services = s.wait_all_healthy()
    pids = [info["pid"] for info in services.values()]
    assert len(pids) == 6
    token_file = s.data_dir / "auth" / "operator.key"
    key = token_file.read_text()
    first = [line for line in s.log().splitlines() if line.startswith("First run:")]
    assert len(first) == 1 and "/setup/ghx_" in first[0], s.log()
    assert s.stop() == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert "stopped" in s.log()
    assert not (s.data_dir / "run" / "state.json").exists()
    # Running `up` again reuses the same data directory (same operator key, same cluster).
    s2 = Stack(fresh_root)
    s2.output = fresh_root / "up2.log"
    s2.start()
    try:
        s2.wait_all_healthy()
        assert token_file.read_text() == key
        assert "initdb" not in s2.log()
        # The one-time admin link is offered on the first run only; later: where to sign in.
        assert "First run:" not in s2.log() and "Sign in at http://localhost:" in s2.log()
    finally:
        assert s2.stop() == 0


def test_supervisor_killed_leaves_no_orphans(fresh_root: Path) -> None:
    s = Stack(fresh_root)
    s.start()
    pids = [info["pid"] for info in s.wait_all_healthy().values()]
    assert s.proc is not None
    s.proc.kill()  # SIGKILL: no chance to clean up; the kernel's parent-death signal must
    s.proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    # No stale lock: a new `up` starts on the same directory.
    s.stop()  # closes the output file; the process is already gone
    s2 = Stack(fresh_root)
    s2.output = fresh_root / "up2.log"
    s2.start()
    assert s2.stop() == 0


def test_busy_port_is_one_line(fresh_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [GRAINHOUSE, "up", "--data-dir", str(fresh_root / "var"), "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"port {port}" in lines[0] and "in use" in lines[0]


def test_unwritable_data_dir_is_one_line(fresh_root: Path) -> None:
    blocker = fresh_root / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [GRAINHOUSE, "up", "--data-dir", str(blocker / "var"), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("module", "env", "expected"),
    [
        (
            "grainhouse_backup",
            {"GRAINHOUSE_BACKUP_COLOUR": "red"},
            "unknown setting GRAINHOUSE_BACKUP_COLOUR",
        ),
        (
            "grainhouse_auth",
            {"GRAINHOUSE_LOG_LEVEL": "loud"},
            "invalid setting GRAINHOUSE_LOG_LEVEL='loud'",
        ),
        ("grainhouse_grainmgr", {"GRAINHOUSE_NOPE": "1"}, "unknown setting GRAINHOUSE_NOPE"),
        (
            "grainhouse_frontend",
            {"GRAINHOUSE_FRONTEND_MAX_REQUEST_LINE_BYTES": "5"},
            "GRAINHOUSE_FRONTEND_MAX_REQUEST_LINE_BYTES",
        ),
        ("grainhouse_backup", {}, "setting GRAINHOUSE_BACKUP_DATABASE_URL is required"),
    ],
)
def test_bad_settings_exit_2_with_one_line(module: str, env: dict[str, str], expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
    clean.setdefault("GRAINHOUSE_BACKUP_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    if module == "grainhouse_backup" and not env:
        clean.pop("GRAINHOUSE_BACKUP_DATABASE_URL")
    proc = subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_migrations_are_idempotent_and_safe_when_two_run_at_once(stack: Stack) -> None:
    stack.wait_all_healthy()
    password = (stack.data_dir / "secrets" / "postgres-admin").read_text().strip()
    pg = stack.services()["postgres"]["tcp"].split(":")
    admin = psycopg.conninfo.make_conninfo(
        host=pg[0], port=pg[1], dbname="grainhouse", user="grainhouse", password=password
    )
    schema = "migtest_" + os.urandom(3).hex()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    async def run_once() -> list[int]:
        conn = await psycopg.AsyncConnection.connect(admin, options=f"-c search_path={schema}")
        try:
            return await db.migrate(conn, schema, "grainhouse_backup.migrations")
        finally:
            await conn.close()

    async def both() -> list[list[int]]:
        return list(await asyncio.gather(run_once(), run_once()))

    versions = [v for v, _, _ in db.migrations_in("grainhouse_backup.migrations")]
    assert versions[:1] == [1]
    try:
        results = asyncio.run(both())
        assert sorted(results, key=len) == [[], versions]  # exactly one applied them
        assert asyncio.run(run_once()) == []  # and again: nothing to do
        with psycopg.connect(admin) as conn:
            rows = conn.execute(
                f"SELECT version FROM {schema}.schema_migrations ORDER BY version"
            ).fetchall()
        assert rows == [(v,) for v in versions]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
