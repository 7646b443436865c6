"""`grainhouse backup create|ls|download|restore` against the running platform, with --json:
an interrupted download (a truncated file) resumes with a Range request and checks out."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from grainhouse_cli.commands_backups import backup_app

from .harness import Client, Stack, make_token, sign_up

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


def cli_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.add_typer(backup_app, name="backup")  # as main.py wires it
    return app


@pytest.fixture(scope="module")
def cli_user(stack: Stack, admin: Client) -> Client:
    """An account of this module's own: backup tasks are limited per owner (4 running), and
    the admin's may still be running from other tests (schedules, tasks not waited for)."""
    user = sign_up(stack, admin, "Cleo Cli", "cleo-cli@example.org")
    return Client(stack.url, token=make_token(user, "write"))


@pytest.fixture
def run(stack: Stack, cli_user: Client, tmp_path: Path) -> Any:
    runner = CliRunner()
    env = {"GRAINHOUSE_URL": stack.url, "GRAINHOUSE_TOKEN": cli_user.token or "",
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}  # fmt: skip

    def go(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli_app(), ["backup", *args], env=env)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        if "--json" in args and code == 0:
            return json.loads(result.stdout)  # stdout holds the JSON and nothing else
        return result

    return go


def test_create_ls_download_resume_restore(
    run: Any, cli_user: Client, probe_app: dict[str, Any], tmp_path: Path
) -> None:
    made = cli_user.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "CLI"})
    gid = made.json()["id"]
    started = run("create", gid, "--json")
    assert started["kind"] == "backup" and started["id"].startswith("bkt_")
    backup = run("create", gid, "--wait", "--json")
    assert backup["grain_id"] == gid and len(backup["sha256"]) == 64
    listed = run("ls", "--grain", gid, "--json")
    assert backup["id"] in {b["id"] for b in listed}
    assert {b["grain_id"] for b in listed} == {gid}

    out = tmp_path / "b.zip"
    first = run("download", backup["id"], "-o", str(out), "--json")
    assert first == {"id": backup["id"], "path": str(out), "size_bytes": backup["size_bytes"],
                     "sha256": backup["sha256"], "resumed_from": 0}  # fmt: skip
    whole = out.read_bytes()
    assert hashlib.sha256(whole).hexdigest() == backup["sha256"]
    # Interrupted: keep only the first part, then run the same command again.
    half = len(whole) // 2
    out.write_bytes(whole[:half])
    again = run("download", backup["id"], "-o", str(out), "--json")
    assert again["resumed_from"] == half and out.read_bytes() == whole
    # A corrupt partial file is caught by the checksum, with a non-zero exit.
    out.write_bytes(b"\0" * half)
    bad = run("download", backup["id"], "-o", str(out), "--json", code=1)
    assert "SHA-256" in bad.stderr and bad.stdout == ""

    fresh = tmp_path / "fresh.zip"
    fresh.write_bytes(whole)
    restored = run("restore", str(fresh), "--title", "From CLI", "--wait", "--json")
    assert set(restored) == {"id", "url", "task"} and restored["id"] != gid
    assert cli_user.api("GET", f"/grains/{restored['id']}").json()["title"] == "From CLI"


def test_refused_restore_exits_5_with_the_reason(run: Any, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr("/etc/passwd", b"root::0:0::/:/bin/sh\n")
    result = run("restore", str(hostile), "--wait", "--json", code=5)
    assert result.stdout == ""
    assert "restore failed: absolute_path:" in result.stderr


def test_unknown_grain_exits_4(run: Any) -> None:
    result = run("create", "0" * 32, "--json", code=4)
    assert result.stdout == "" and "HTTP 404" in result.stderr
