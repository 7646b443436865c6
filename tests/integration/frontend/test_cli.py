"""The `grainhouse` REST commands against the running platform (JSON on stdout, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from grainhouse_cli import commands_apps, commands_login
from grainhouse_cli.commands_grains import grain_app
from grainhouse_cli.commands_tokens import token_app

from .harness import Client, Stack, build_probe

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


def cli_app() -> typer.Typer:
    # The same wiring main.py gets (see the report); built here so the test needs no PATH.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    apps = typer.Typer()
    commands_apps.register(apps)
    app.add_typer(apps, name="app")
    app.add_typer(grain_app, name="grain")
    app.add_typer(token_app, name="token")
    commands_login.register(app)
    return app


@pytest.fixture
def run(stack: Stack, admin_api: Client, tmp_path: Path) -> Any:
    runner = CliRunner()
    env = {"GRAINHOUSE_URL": stack.url, "GRAINHOUSE_TOKEN": admin_api.token or "",
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}  # fmt: skip

    def go(*args: str, code: int = 0, **extra: str) -> Any:
        result = runner.invoke(cli_app(), list(args), env={**env, **extra})
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return json.loads(result.stdout) if "--json" in args and code == 0 else result

    return go


def test_install_new_share_and_api_token(run: Any, tmp_path: Path) -> None:
    pkg = build_probe(tmp_path)
    installed = run("app", "install", str(pkg), "--json")
    assert installed["title"] == "Probe"
    assert installed["package_id"] in {a["package_id"] for a in run("app", "ls", "--json")}
    made = run("grain", "new", installed["app_id"], "--title", "From CLI", "--json")
    assert set(made) == {"id", "url"} and made["url"].endswith("/grain/" + made["id"])
    assert made["id"] in {g["id"] for g in run("grain", "ls", "--json")}
    shared = run("grain", "share", made["id"], "--role", "viewer", "--json")
    assert "/shared/ghl_" in shared["url"]
    tok = run("grain", "api-token", made["id"], "--role", "editor", "--json")
    assert tok["token"].startswith("ghg_") and tok["api_url"].startswith("http://api.")
    assert run("grain", "rm", made["id"], "--json")["state"] == "trashed"


def test_tokens_and_exit_codes(run: Any) -> None:
    made = run("token", "create", "cli-made", "--scope", "admin", "--days", "1", "--json")
    assert made["token"].startswith("ghp_")
    assert made["id"] in {t["id"] for t in run("token", "ls", "--json")}
    assert run("token", "revoke", made["id"], "--json") == {"id": made["id"], "revoked": True}
    run("grain", "open", "no-such-grain", "--json", code=4)
    bad = run("grain", "ls", "--json", code=3, GRAINHOUSE_TOKEN="ghp_nope")
    assert bad.stdout == ""  # nothing but JSON ever reaches stdout


def test_login_saves_a_private_context(run: Any, stack: Stack, tmp_path: Path) -> None:
    out = run("login", "--url", stack.url, "--json", GRAINHOUSE_URL="")
    assert out["scope"] == "admin"
    saved = tmp_path / "cfg" / "grainhouse" / "context.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    listed = run("grain", "ls", "--json", GRAINHOUSE_URL="", GRAINHOUSE_TOKEN="")
    assert isinstance(listed, list)
