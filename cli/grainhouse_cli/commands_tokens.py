"""`grainhouse token create|ls|revoke`: personal API tokens over the REST API.

Owns: nothing; each command is one REST call.
Trusts: the server's answers (it decides which scopes a token may give).
Never: prints a token secret anywhere but stdout.
"""

from __future__ import annotations

from typing import Annotated

import typer

from grainhouse_cli.commands_common import (
    JsonOpt,
    UrlOpt,
    client,
    emit,
    err_console,
    paged,
    run,
    table,
)

token_app = typer.Typer(help="Personal API tokens.", no_args_is_help=True)


@token_app.command("create")
def create(
    name: str,
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    days: Annotated[int, typer.Option(min=1, max=365, help="Lifetime in days.")] = 30,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Make a token; prints the secret once."""
    cli = client(url)
    doc = run(
        lambda: cli.request(
            "POST", "/api/v1/tokens", {"name": name, "scopes": [scope], "ttl_seconds": days * 86400}
        ).json()
    )
    emit(as_json, doc, lambda: print(doc["token"]))


@token_app.command("ls")
def ls(as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """List your live tokens (never their secrets)."""
    cli = client(url)
    items = run(lambda: paged(cli, "/api/v1/tokens"))
    emit(
        as_json,
        items,
        lambda: table(
            ["ID", "NAME", "SCOPES", "EXPIRES", "HINT"],
            [
                [t["id"], t["name"], ",".join(t["scopes"]), t["expires_at"], t["secret_hint"]]
                for t in items
            ],
        ),
    )


@token_app.command("revoke")
def revoke(token_id: str, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Revoke a token at once."""
    cli = client(url)
    run(lambda: cli.request("DELETE", f"/api/v1/tokens/{token_id}"))
    emit(as_json, {"id": token_id, "revoked": True}, lambda: err_console.print("Revoked."))
