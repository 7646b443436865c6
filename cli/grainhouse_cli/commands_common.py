"""What every REST command shares: the --json switch, output streams, and error exits.

Owns: the rule "JSON on stdout with --json, everything else on stderr"; turning ApiError into
an exit code; progress bars.
Trusts: nothing; it only formats.
Never: prints a secret to stderr (secrets go to stdout only, where the caller asked for them).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from grainhouse_cli.client import ApiError, Client, exit_code_for

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (nothing else).")]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Platform URL (default: GRAINHOUSE_URL or login).")
]
T = TypeVar("T")
err_console = Console(stderr=True)
out_console = Console()


def client(url: str | None = None) -> Client:
    return run(lambda: Client.from_context(url))


def run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ApiError as exc:
        err_console.print(f"grainhouse: {exc}", markup=False, highlight=False)
        raise typer.Exit(exc.exit_code) from None


def emit(as_json: bool, doc: Any, human: Callable[[], object] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=None) + "\n")
        return
    if human is not None:
        human()
    else:
        out_console.print_json(json.dumps(doc))


def table(columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(*columns, box=None, header_style="bold")
    for r in rows:
        t.add_row(*[str(c) if c is not None else "" for c in r])
    out_console.print(t)


@contextmanager
def progress_bar(label: str, total: int | None, quiet: bool) -> Iterator[Callable[[int], None]]:
    """Yield advance(n); the bar goes to stderr (never mixed with --json output)."""
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        disable=quiet or not err_console.is_terminal,
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def paged(cli: Client, path: str, limit: int = 200) -> list[dict[str, Any]]:
    """Every item of a cursor-paged collection."""
    items: list[dict[str, Any]] = []
    cursor = ""
    sep = "&" if "?" in path else "?"
    for _ in range(1000):
        query = f"{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = cli.request("GET", path + query).json()
        items += page["items"]
        cursor = page.get("next_cursor") or ""
        if not cursor:
            break
    return items


def wait_task(cli: Client, task: dict[str, Any], what: str, seconds: float) -> dict[str, Any]:
    """Poll a 202 task until it is final; a failed task raises with the server's reason.

    Exit codes: the task error's HTTP status as everywhere (422 refused archive → 5), a
    retryable failure or running out of `seconds` → 6.
    """
    deadline = time.monotonic() + seconds
    while task["state"] == "running":
        if time.monotonic() > deadline:
            raise ApiError(f"the {what} did not finish in time", exit_code=6)
        time.sleep(0.3)
        task = cli.request("GET", f"/api/v1/tasks/{task['id']}").json()
    if task["state"] != "succeeded":
        error = task.get("error") or {}
        status = int(error.get("status", 0) or 0)
        code = 6 if error.get("retryable") else exit_code_for(status) if status else 1
        raise ApiError(f"{what} failed: {error.get('detail', 'unknown error')}", status, code)
    return task
