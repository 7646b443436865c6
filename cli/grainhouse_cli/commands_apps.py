"""`grainhouse app install|ls|rm`: installed apps over the REST API.

Owns: nothing; each command is one REST call (install: upload, then wait on its task).
Trusts: the server's answers.
Never: reads a package whole into memory (it streams with a progress bar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from grainhouse_cli.commands_common import (
    JsonOpt,
    UrlOpt,
    client,
    emit,
    err_console,
    paged,
    progress_bar,
    run,
    table,
    wait_task,
)

TASK_WAIT_SECONDS = 600


def install(
    package: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Upload a signed package and wait until it is installed."""
    cli = client(url)
    size = package.stat().st_size

    def go() -> dict[str, Any]:
        with package.open("rb") as f, progress_bar("Uploading", size, as_json) as advance:
            task = cli.upload("/api/v1/apps", f, size, advance).json()
        task = wait_task(cli, task, "install", TASK_WAIT_SECONDS)
        return dict(task["result"])

    result = run(go)
    emit(
        as_json,
        result,
        lambda: err_console.print(f"Installed {result['title']} v{result['version']}"),
    )


def ls(as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """List installed apps."""
    cli = client(url)
    items = run(lambda: paged(cli, "/api/v1/apps"))
    emit(
        as_json,
        items,
        lambda: table(
            ["TITLE", "VERSION", "GRAINS", "APP ID", "PACKAGE"],
            [
                [
                    a["title"],
                    a["marketing_version"] or a["version"],
                    a["grain_count"],
                    a["app_id"][:16] + "…",
                    a["package_id"][:12],
                ]
                for a in items
            ],
        ),
    )


def rm(
    package_id: str,
    force: Annotated[bool, typer.Option(help="Uninstall even though grains use it.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Uninstall a package (by package id)."""
    cli = client(url)
    q = "?force=true" if force else ""
    doc = run(lambda: cli.request("DELETE", f"/api/v1/apps/{package_id}{q}").json())
    emit(as_json, doc, lambda: err_console.print("Uninstalled."))


def register(app: typer.Typer) -> None:
    """Add install/ls/rm to the existing `grainhouse app` group (author tools live there)."""
    app.command("install")(install)
    app.command("ls")(ls)
    app.command("rm")(rm)
