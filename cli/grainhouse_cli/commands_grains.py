"""`grainhouse grain new|ls|open|stop|rm|logs|share|api-token` over the REST API.

Owns: nothing; each command is one or two REST calls.
Trusts: the server's answers.
Never: prints a share link or token secret except on stdout (where the caller asked for it).
"""

from __future__ import annotations

import sys
import webbrowser
from typing import Annotated, Any

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

grain_app = typer.Typer(
    help="Grains: create, list, open, share, stop, remove.", no_args_is_help=True
)
RoleOpt = Annotated[str, typer.Option("--role", help="A role of the app (e.g. viewer, editor).")]


@grain_app.command("new")
def new(
    app_id: str,
    title: Annotated[str, typer.Option("--title", help="Title of the new grain.")] = "",
    action: Annotated[int, typer.Option(help="Which of the app's actions (index).")] = 0,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Create a grain of an installed app; prints its id and URL."""
    cli = client(url)
    g = run(
        lambda: cli.request(
            "POST", "/api/v1/grains", {"app_id": app_id, "title": title, "action": action}
        ).json()
    )
    emit(as_json, {"id": g["id"], "url": g["url"]}, lambda: print(g["url"]))


@grain_app.command("ls")
def ls(
    trash: Annotated[bool, typer.Option("--trash", help="List the trash instead.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """List your grains."""
    cli = client(url)
    items = run(lambda: paged(cli, "/api/v1/grains" + ("?trashed=only" if trash else "")))
    emit(
        as_json,
        items,
        lambda: table(
            ["ID", "TITLE", "APP", "STATE", "SIZE"],
            [[g["id"], g["title"], g["app_title"], _state(g), g["size_bytes"]] for g in items],
        ),
    )


def _state(g: dict[str, Any]) -> str:
    """The state, and whether the app keeps the grain awake (its reasons: `grain ls --json`)."""
    return f"{g['state']} (kept awake)" if g.get("awake_reasons") else str(g["state"])


@grain_app.command("open")
def open_(
    grain_id: str,
    browser: Annotated[bool, typer.Option(help="Open it in a web browser.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Print (or open) the grain's page on the platform."""
    cli = client(url)
    g = run(lambda: cli.request("GET", f"/api/v1/grains/{grain_id}").json())
    if browser and not as_json:
        webbrowser.open(g["url"])
    emit(as_json, {"id": g["id"], "url": g["url"]}, lambda: print(g["url"]))


def _lifecycle(grain_id: str, op: str, as_json: bool, url: str | None, said: str) -> None:
    cli = client(url)
    g = run(lambda: cli.request("POST", f"/api/v1/grains/{grain_id}/{op}").json())
    emit(as_json, g, lambda: err_console.print(said))


@grain_app.command("stop")
def stop(grain_id: str, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Stop a running grain."""
    _lifecycle(grain_id, "stop", as_json, url, "Stopped.")


@grain_app.command("restore")
def restore(grain_id: str, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Take a grain out of the trash."""
    _lifecycle(grain_id, "restore", as_json, url, "Restored.")


@grain_app.command("rm")
def rm(
    grain_id: str,
    purge: Annotated[bool, typer.Option(help="Delete for good instead of trashing.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Move a grain to the trash (or with --purge delete it for good)."""
    if not purge:
        _lifecycle(grain_id, "trash", as_json, url, "Moved to the trash.")
        return
    cli = client(url)
    run(lambda: cli.request("DELETE", f"/api/v1/grains/{grain_id}?force=true"))
    emit(as_json, {"id": grain_id, "deleted": True}, lambda: err_console.print("Deleted."))


@grain_app.command("logs")
def logs(grain_id: str, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Print the tail of the grain's log (untrusted app output)."""
    cli = client(url)
    reply = run(
        lambda: cli.request("GET", f"/api/v1/grains/{grain_id}/logs", headers={"Accept": "*/*"})
    )
    text = reply.body.decode("utf-8", "replace")
    emit(as_json, {"id": grain_id, "log": text}, lambda: sys.stdout.write(text))


def _grant(url: str | None, grain_id: str, kind: str, role: str, label: str) -> Any:
    """POST a share link or a grain API token (`kind`) for `role`; the created document."""
    cli = client(url)
    return run(
        lambda: cli.request(
            "POST", f"/api/v1/grains/{grain_id}/{kind}", {"role": role, "label": label}
        ).json()
    )


@grain_app.command("share")
def share(
    grain_id: str,
    role: RoleOpt,
    label: Annotated[str, typer.Option(help="Who it is for.")] = "",
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Make a share link with a role; prints the link (shown once)."""
    doc = _grant(url, grain_id, "shares", role, label)
    emit(as_json, {"url": doc["url"], "grant_id": doc["grant"]["id"]}, lambda: print(doc["url"]))


@grain_app.command("api-token")
def api_token(
    grain_id: str,
    role: RoleOpt,
    label: Annotated[str, typer.Option(help="Which client it is for.")] = "cli",
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Make a grain API token for DAV/git clients; prints the token and the API URL."""
    doc = _grant(url, grain_id, "api-tokens", role, label)
    emit(
        as_json,
        {"token": doc["token"], "api_url": doc["api_url"], "grant_id": doc["grant"]["id"]},
        lambda: print(f"{doc['api_url']}\n{doc['token']}"),
    )
