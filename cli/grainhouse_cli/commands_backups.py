"""`grainhouse backup create|ls|download|restore|rm`: grain backups over the REST API.

Owns: the resume rule of `backup download` (a partial FILE continues with a Range request
guarded by If-Range on the archive's SHA-256; the finished file is checked against it).
Trusts: the server's answers; nothing in a partial file but its length (the checksum decides).
Never: reads an archive whole into memory (256 KiB blocks both ways); prints anything but JSON
on stdout with --json (progress bars and messages go to stderr).
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.parse
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from grainhouse_cli.client import BLOCK, ApiError, Client, Reply
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

TASK_WAIT_SECONDS = 3600
backup_app = typer.Typer(help="Backups: make, list, download and restore.", no_args_is_help=True)
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the task has finished.")]


@backup_app.command("create")
def create(
    grain_id: str,
    note: Annotated[str, typer.Option(help="A note shown in lists (≤ 200 characters).")] = "",
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Back a grain up now. Prints the task, or with --wait the finished backup."""
    cli = client(url)

    def go() -> dict[str, Any]:
        # One key per invocation: a retry after a lost answer does not make a second backup.
        task = cli.request(
            "POST", f"/api/v1/grains/{grain_id}/backups", {"note": note},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        ).json()  # fmt: skip
        if not wait:
            return dict(task)
        task = wait_task(cli, task, "backup", TASK_WAIT_SECONDS)
        return dict(cli.request("GET", f"/api/v1/backups/{task['result']['backup_id']}").json())

    doc = run(go)
    emit(as_json, doc, lambda: err_console.print(
        f"Backup {doc['id']} ({doc['size_bytes']} bytes)" if "sha256" in doc
        else f"Backup started: task {doc['id']}"))  # fmt: skip


@backup_app.command("ls")
def ls(
    grain: Annotated[str | None, typer.Option("--grain", help="Only this grain's backups.")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """List your backups, newest first."""
    cli = client(url)
    path = "/api/v1/backups" + (f"?grain_id={urllib.parse.quote(grain)}" if grain else "")
    items = run(lambda: paged(cli, path))
    emit(as_json, items, lambda: table(
        ["ID", "GRAIN", "MADE", "SIZE", "FILES"],
        [[b["id"], b["grain_title"], b["created_at"], b["size_bytes"], b["file_count"]]
         for b in items],
    ))  # fmt: skip


@backup_app.command("rm")
def rm(backup_id: str, as_json: JsonOpt = False, url: UrlOpt = None) -> None:
    """Delete a backup archive."""
    cli = client(url)
    run(lambda: cli.request("DELETE", f"/api/v1/backups/{backup_id}"))
    emit(as_json, {"id": backup_id, "deleted": True}, lambda: err_console.print("Deleted."))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def fetch(cli: Client, backup_id: str, out: Path, quiet: bool) -> dict[str, Any]:
    """Download (or finish downloading) the archive into `out`; verify its SHA-256."""
    info = cli.request("GET", f"/api/v1/backups/{backup_id}").json()
    size, digest = int(info["size_bytes"]), str(info["sha256"])
    have = out.stat().st_size if out.exists() else 0
    if have > size:
        have = 0  # not a prefix of this archive: start again
    resumed_from = have
    if have < size:
        headers = cli._headers({"Accept": "application/zip"})
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = f'"{digest}"'
        try:
            conn = cli._conn()
            conn.request("GET", cli.parts.path + info["download_url"], headers=headers)
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                raise cli._error(Reply(resp.status, {}, resp.read()))
            if resp.status == 200:
                have = resumed_from = 0  # the server sent it whole (archive changed?)
            mode = "ab" if have else "wb"
            with (
                out.open(mode) as dest,
                progress_bar("Downloading", size, quiet) as advance,
            ):
                advance(have)
                while block := resp.read(BLOCK):
                    dest.write(block)
                    advance(len(block))
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"download from {cli.url} failed: {exc}", exit_code=6) from None
    got = out.stat().st_size
    if got != size or _sha256(out) != digest:
        raise ApiError(
            f"{out}: the download does not match the backup's SHA-256 "
            f"({got} of {size} bytes); delete the file and run again",
            exit_code=1,
        )
    return {"id": backup_id, "path": str(out), "size_bytes": size, "sha256": digest,
            "resumed_from": resumed_from}  # fmt: skip


@backup_app.command("download")
def download(
    backup_id: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File to write (default BACKUP_ID.zip).")
    ] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Download a backup archive; an existing partial FILE is resumed with a Range request."""
    cli = client(url)
    out = output or Path(f"{backup_id}.zip")
    doc = run(lambda: fetch(cli, backup_id, out, as_json))
    resumed = f", resumed at byte {doc['resumed_from']}" if doc["resumed_from"] else ""
    emit(as_json, doc, lambda: err_console.print(
        f"Saved {doc['path']} ({doc['size_bytes']} bytes, SHA-256 checked{resumed})"))  # fmt: skip


@backup_app.command("restore")
def restore(
    archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    title: Annotated[str, typer.Option(help="Title of the new grain.")] = "",
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
) -> None:
    """Upload a backup archive; it is validated and restored into a NEW grain."""
    cli = client(url)
    size = archive.stat().st_size

    def go() -> dict[str, Any]:
        q = f"?title={urllib.parse.quote(title)}" if title else ""
        with archive.open("rb") as f, progress_bar("Uploading", size, as_json) as advance:
            task = cli.upload(f"/api/v1/restores{q}", f, size, advance,
                              headers={"Idempotency-Key": str(uuid.uuid4())}).json()  # fmt: skip
        if not wait:
            return dict(task)
        task = wait_task(cli, task, "restore", TASK_WAIT_SECONDS)
        return {"id": task["result"]["grain_id"], "url": task["result"]["url"],
                "task": task["id"]}  # fmt: skip

    doc = run(go)
    emit(as_json, doc, lambda: err_console.print(
        f"Restored into grain {doc['id']}: {doc['url']}" if "url" in doc
        else f"Restore started: task {doc['id']}"))  # fmt: skip
