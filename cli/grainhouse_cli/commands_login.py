"""`grainhouse login`: remember a platform URL and an API token for the REST commands.

Owns: the interactive half of the login context (client.py reads and writes the file).
Trusts: the token the user pastes (the server checks it at once).
Never: echoes the token; stores it anywhere but the 0600 context file.
"""

from __future__ import annotations

from typing import Annotated

import typer

from grainhouse_cli.client import Client, save_context
from grainhouse_cli.commands_common import JsonOpt, emit, err_console, run


def login(
    url: Annotated[
        str, typer.Option(prompt="Platform URL", help="e.g. https://grains.example.org")
    ],
    token: Annotated[
        str,
        typer.Option(
            prompt="API token (Account → API tokens)",
            hide_input=True,
            envvar="GRAINHOUSE_TOKEN",
            help="A personal API token (ghp_…).",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Check a token against the server and save it as the default context."""
    me = run(lambda: Client(url, token).request("GET", "/api/v1/me").json())
    path = save_context(url, token)
    emit(
        as_json,
        {"url": url.rstrip("/"), "account_id": me["account_id"], "scope": me["scope"]},
        lambda: err_console.print(f"Signed in to {url} (scope {me['scope']}); saved in {path}"),
    )


def register(app: typer.Typer) -> None:
    app.command("login")(login)
