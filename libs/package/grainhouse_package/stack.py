"""The Python stack: turn a Python web app from PyPI into a package directory ready to pack.

Owns: the layout of a Python stack build (app sources at the root, dependencies in
``site-packages/``) and the environment it adds to the manifest (PYTHONPATH and friends).
Trusts: pip (run as a child process, argument list only) and the index it is configured with.
Never: uses a shell; installs source distributions (only wheels: nothing runs setup.py on the
author's machine and the result matches the grain's interpreter); writes outside `out_dir`.

Inside a grain the package is mounted at /opt/app and Python apps run on Debian's
/usr/bin/python3 (3.11, without pip or venv), so dependencies are installed with *this*
environment's pip as plain directories (``pip install --target``) for CPython 3.11, and the
manifest puts ``/opt/app/site-packages`` on PYTHONPATH.
"""

from __future__ import annotations

import compileall
import json
import py_compile
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import Manifest, manifest_from_dict, to_json

APP_ROOT = "/opt/app"
SITE_PACKAGES = "site-packages"
GRAIN_PYTHON = "/usr/bin/python3"
#: Added to the manifest's env unless the app already sets them.
DEFAULT_ENV = {
    "HOME": "/var",
    "LANG": "C.UTF-8",
    # /opt/app is read-only inside a grain; do not even try to write .pyc files there.
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
PIP_TIMEOUT_SECONDS = 900
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".venv", SITE_PACKAGES)


@dataclass(frozen=True)
class PythonStack:
    """What to build; every field but `source_dir` may be omitted when grainhouse.json has it."""

    source_dir: Path
    requirements: Path | None = None
    command: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    title: str | None = None
    version: int | None = None
    marketing_version: str | None = None
    noun: str | None = None
    python_version: str = "3.11"


def build_python_stack(
    stack: PythonStack, out_dir: Path, pip: Sequence[str] = (sys.executable, "-m", "pip")
) -> Manifest:
    """Copy the app, install its requirements under site-packages/, write grainhouse.json."""
    src = stack.source_dir
    if not src.is_dir():
        raise PackageError("not_found", f"{src} is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PackageError("conflict", f"{out_dir} exists and is not empty")
    requirements = stack.requirements or src / "requirements.txt"
    if not requirements.is_file():
        raise PackageError("not_found", f"requirements file {requirements} does not exist")
    manifest = manifest_from_dict(_manifest_doc(stack))
    shutil.copytree(src, out_dir, symlinks=True, ignore=_SKIP, dirs_exist_ok=True)
    (out_dir / "grainhouse.json").write_bytes(to_json(manifest))
    _pip_install(pip, requirements, out_dir / SITE_PACKAGES, stack.python_version)
    _compile(out_dir, stack.python_version)
    return manifest


def _compile(root: Path, py: str) -> None:
    """Byte-compile the tree with hash-checked .pyc files.

    Installing a package gives its files fresh mtimes, so pip's mtime-stamped .pyc files are
    stale in every grain and, /opt/app being read-only, each start recompiles every module in
    memory (about 50% more CPU to import uvicorn, measured by bench/bench_grains.py).
    Only when this interpreter is the grain's version (another one's .pyc would be ignored).
    """
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != py:
        return
    compileall.compile_dir(
        str(root),
        ddir=APP_ROOT,  # tracebacks name the files where the grain sees them
        quiet=2,
        force=True,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )


def _manifest_doc(stack: PythonStack) -> dict[str, Any]:
    path = stack.source_dir / "grainhouse.json"
    doc: dict[str, Any] = {}
    if path.is_file():
        loaded = _load_json(path)
        if not isinstance(loaded, dict):
            raise PackageError("invalid", f"{path}: must hold a JSON object")
        doc = loaded
    if stack.title is not None:
        doc["title"] = stack.title
    if stack.version is not None:
        doc["version"] = stack.version
    if stack.marketing_version is not None:
        doc["marketing_version"] = stack.marketing_version
    elif "marketing_version" not in doc and "version" in doc:
        doc["marketing_version"] = str(doc["version"])
    if stack.command is not None:
        argv = shlex.split(stack.command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = GRAIN_PYTHON  # the only interpreter a grain has
        noun = stack.noun or (doc["actions"][0]["noun"] if doc.get("actions") else "document")
        doc["actions"] = [{"noun": noun, "command": argv, "description": ""}]
        doc["continue_command"] = argv
    if stack.port is not None:
        doc["listen"] = {"port": stack.port}
    if stack.unix_socket is not None:
        doc["listen"] = {"unix_socket": stack.unix_socket}
    env = dict(doc.get("env", {}))
    site = f"{APP_ROOT}/{SITE_PACKAGES}"
    paths = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    env["PYTHONPATH"] = ":".join([site, *[p for p in paths if p != site]])
    for name, value in DEFAULT_ENV.items():
        env.setdefault(name, value)
    doc["env"] = env
    return doc


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise PackageError("invalid", f"{path}: not valid JSON: {exc}") from exc


def _pip_install(pip: Sequence[str], requirements: Path, target: Path, py: str) -> None:
    argv = [
        *pip,
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--no-warn-script-location",
        "--target",
        str(target),
        # Wheels only, for the grain's CPython: nothing is built or run on this machine.
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        py,
        "-r",
        str(requirements),
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageError("internal", f"cannot run pip: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise PackageError("invalid", f"pip install failed (exit {done.returncode}): {tail}")
    # Console scripts carry this machine's venv interpreter in their #! line: useless in a grain.
    shutil.rmtree(target / "bin", ignore_errors=True)
