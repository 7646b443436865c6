"""The `grainhouse` command: bring the platform up, look at it, administer it.

Owns: command-line parsing and exit codes; JSON on stdout for `--json`, everything else
on stderr.
Trusts: the data directory it is pointed at (it is the operator's).
Never: imports a service package; talks to services only over gRPC and HTTP.

Exit codes: 0 ok, 1 the operation failed, 2 bad input (usage, settings).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from grainhouse_cli import admin, commands_apps, commands_login, setup_link
from grainhouse_cli.app_commands import app_cmd
from grainhouse_cli.commands_backups import backup_app
from grainhouse_cli.commands_grains import grain_app
from grainhouse_cli.commands_tokens import token_app
from grainhouse_cli.datadir import DataDir, DataDirError
from grainhouse_cli.supervisor import Supervisor, status

app = typer.Typer(
    name="grainhouse",
    help="Grainhouse: a self-hosted app platform where every document is a sandboxed grain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(
    help="Operator commands (run on the server's machine).", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")

# Author tools (keygen, pack, verify, stack) and, over the REST API, install|ls|rm.
commands_apps.register(app_cmd)
app.add_typer(app_cmd, name="app", help="Apps: author tools, and install / ls / rm over the API.")
app.add_typer(grain_app, name="grain")
app.add_typer(token_app, name="token")
app.add_typer(backup_app, name="backup")
commands_login.register(app)  # grainhouse login

DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="GRAINHOUSE_DATA_DIR",
        help="Directory that holds all state (default ./var).",
    ),
]


def err(message: str) -> None:
    print(f"grainhouse: {message}", file=sys.stderr)


@app.command()
def up(
    data_dir: DataDirOpt = Path("var"),
    http_port: Annotated[
        int,
        typer.Option(
            help="Public HTTP port; the next ten ports are used internally. 0 = any free ports."
        ),
    ] = 6080,
    verbose: Annotated[bool, typer.Option(help="Show service logs on the terminal.")] = False,
) -> None:
    """Start PostgreSQL, NATS and the four services; stop them all on Ctrl-C."""
    data = DataDir(data_dir)
    try:
        data.prepare()
        lock = data.lock()
    except DataDirError as exc:
        err(str(exc))
        raise typer.Exit(1) from None

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        code = asyncio.run(Supervisor(data, http_port, verbose, say).run())
    except DataDirError as exc:
        err(str(exc))
        code = 1
    finally:
        lock.close()
    raise typer.Exit(code)


@app.command("status")
def status_cmd(
    data_dir: DataDirOpt = Path("var"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Each service with its pid, health and addresses."""
    info = status(DataDir(data_dir))
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        if not info["running"]:
            print(f"Grainhouse is not running on {info['data_dir']}")
        else:
            print(f"Grainhouse at {info['url']} (supervisor pid {info['pid']})")
            for name, svc in info["services"].items():
                state = "healthy" if svc["healthy"] else "UNHEALTHY"
                print(f"  {name:<9} pid {svc.get('pid')!s:<8} {state}")
    if not info["running"]:
        raise typer.Exit(1)


@admin_app.command("api-token")
def api_token(
    data_dir: DataDirOpt = Path("var"),
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "admin-cli",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Print an admin API token for automation (reads the data directory's operator key)."""
    try:
        url, token = admin.issue_admin_token(DataDir(data_dir), name)
    except admin.AdminError as exc:
        err(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"url": url, "token": token}))
    else:
        print(token)


@admin_app.command("setup-link")
def setup_link_cmd(
    data_dir: DataDirOpt = Path("var"),
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (0 = 1 hour).")] = 0,
) -> None:
    """Print a one-time link that makes whoever opens it the admin."""
    try:
        link = setup_link.create_setup_link(DataDir(data_dir), ttl)
    except admin.AdminError as exc:
        err(str(exc))
        raise typer.Exit(1) from None
    print(link.url)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
