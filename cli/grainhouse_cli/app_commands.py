"""`grainhouse app ...`: author tools for app packages (keys, pack, verify, stacks).

Owns: the command-line surface of the package library; stdout carries only results
(JSON with --json), errors go to stderr as one line with exit code 2 (bad input) or 1.
Trusts: grainhouse_package for every check; the author's own files and key.
Never: imports a service package; prints private key material.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from grainhouse_package import (
    PackageError,
    generate_key,
    load_key,
    pack_directory,
    public_key_bytes,
    save_key,
    verify_package,
)
from grainhouse_package.keys import app_id_from_public_key
from grainhouse_package.stack import PythonStack, build_python_stack

app_cmd = typer.Typer(
    help="Author tools: make keys, pack and verify signed app packages, build stacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_cmd = typer.Typer(
    help="Build a package directory from a language stack.", no_args_is_help=True
)
app_cmd.add_typer(stack_cmd, name="stack")

_EXIT_BAD_INPUT = 2
_EXIT_FAILED = 1
_T = TypeVar("_T")

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        "-k",
        envvar="GRAINHOUSE_APP_KEY",
        help="Author key file from `keygen` (or $GRAINHOUSE_APP_KEY).",
    ),
]


def _fail(exc: PackageError) -> NoReturn:
    typer.echo(f"error: {exc.message}", err=True)
    raise typer.Exit(_EXIT_FAILED if exc.kind == "internal" else _EXIT_BAD_INPUT)


def _run(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except PackageError as exc:
        _fail(exc)


def _emit(as_json: bool, doc: dict[str, object], text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
    else:
        typer.echo(text)


@app_cmd.command()
def keygen(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Key file to create (mode 0600).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a new author key; its public half is the app id. Keep the file secret."""
    key = generate_key()
    app_id = app_id_from_public_key(public_key_bytes(key))
    path = output or Path(f"{app_id}.key")
    _run(lambda: save_key(key, path))
    _emit(as_json, {"app_id": app_id, "key_file": str(path)}, app_id)


@app_cmd.command()
def pack(
    directory: Annotated[Path, typer.Argument(help="Directory with grainhouse.json and files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Package file to write.")],
    key: KeyOption = None,
    level: Annotated[
        int, typer.Option("--level", min=0, max=9, help="xz level: 0 fastest, 9 smallest.")
    ] = 6,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pack DIR into a signed package FILE (refuses links leaving DIR, devices, setuid)."""
    if key is None:
        _fail(PackageError("invalid", "no key: pass --key KEYFILE or set GRAINHOUSE_APP_KEY"))
    author = _run(lambda: load_key(key))
    verified = _run(lambda: pack_directory(directory, output, author, level=level))
    doc: dict[str, object] = {
        "app_id": verified.app_id,
        "package_id": verified.package_id,
        "title": verified.manifest.title,
        "version": verified.manifest.version,
        "file": str(output),
    }
    _emit(
        as_json,
        doc,
        f"packed {output}: {verified.manifest.title} v{verified.manifest.version}, "
        f"app id {verified.app_id}, package id {verified.package_id}",
    )


@app_cmd.command()
def verify(
    file: Annotated[Path, typer.Argument(help="Package file to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a package's signature, manifest and every file; print what it is."""
    verified = _run(lambda: verify_package(file))
    m = verified.manifest
    doc: dict[str, object] = {
        "app_id": verified.app_id,
        "package_id": verified.package_id,
        "title": m.title,
        "version": m.version,
    }
    _emit(
        as_json,
        doc,
        f"ok: {m.title} {m.marketing_version} (version {m.version})\n"
        f"app id:     {verified.app_id}\npackage id: {verified.package_id}\n"
        f"files:      {verified.entries} entries, {verified.unpacked_bytes} bytes",
    )


@stack_cmd.command("python")
def stack_python(
    source: Annotated[Path, typer.Argument(help="App sources (may hold grainhouse.json).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New directory to build.")],
    requirements: Annotated[
        Path | None,
        typer.Option("--requirements", "-r", help="Default: SOURCE/requirements.txt."),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(help='Start command, e.g. "python3 -m myapp --port 8000".'),
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port the app listens on.")] = None,
    unix_socket: Annotated[
        str | None, typer.Option(help="Or: unix socket path under /tmp or /var.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="App title.")] = None,
    version: Annotated[int | None, typer.Option(help="Monotonic version number.")] = None,
    marketing_version: Annotated[str | None, typer.Option(help="Shown to users.")] = None,
    noun: Annotated[str | None, typer.Option(help='For the "New <noun>" action.')] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Install a Python app's requirements (wheels) into OUTPUT/site-packages and write
    OUTPUT/grainhouse.json; then `grainhouse app pack OUTPUT -o FILE`."""
    spec = PythonStack(
        source_dir=source,
        requirements=requirements,
        command=command,
        port=port,
        unix_socket=unix_socket,
        title=title,
        version=version,
        marketing_version=marketing_version,
        noun=noun,
    )
    manifest = _run(lambda: build_python_stack(spec, output))
    _emit(
        as_json,
        {"directory": str(output), "title": manifest.title, "version": manifest.version},
        f"built {output}: {manifest.title} v{manifest.version}; "
        f"next: grainhouse app pack {output} -o FILE",
    )


if __name__ == "__main__":
    app_cmd()
