#!/usr/bin/env python3
"""Create the secret files deploy/compose.yaml reads, with fresh random passwords.

Owns: the files in the secrets directory (default deploy/secrets/): created once, never
overwritten, so running it again is harmless and never locks a service out of its database.
Trusts: nothing but the operating system's random source.
Never: prints a secret; writes outside the secrets directory.

Run it once before the first `docker compose up` (python3 deploy/gen_secrets.py). Standard
library only, so it runs with any Python 3.11 on the host.

Permissions: the directory is 0700 (only you can list or read through it on the host); the
files are 0644 because compose bind-mounts each one into a container whose unprivileged user
(uid 10001 for Grainhouse, 999 for PostgreSQL) must be able to read it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

DB_HOST = "postgres"
DB_PORT = 5432
DB_NAME = "grainhouse"
SERVICES_WITH_DB = ("auth", "grainmgr", "backup")


def secret_files() -> dict[str, str | None]:
    """File name -> URL template (None: a bare password). The names compose.yaml uses."""
    files: dict[str, str | None] = {"postgres_admin_password": None}
    for svc in SERVICES_WITH_DB:
        files[f"{svc}_database_url"] = (
            f"postgresql://grainhouse_{svc}:{{password}}@{DB_HOST}:{DB_PORT}/{DB_NAME}"
        )
    return files


def write_new(path: Path, text: str) -> bool:
    """Write `text` to a new file; False (and nothing written) if the file exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")
    os.chmod(path, 0o644)  # the umask may have narrowed it; containers must read it
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / "secrets")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    args.dir.chmod(0o700)
    for name, template in secret_files().items():
        # token_urlsafe uses only [A-Za-z0-9_-]: safe inside a URL without quoting.
        password = secrets.token_urlsafe(32)
        text = password if template is None else template.format(password=password)
        made = write_new(args.dir / name, text)
        print(f"{'created' if made else 'kept   '} {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
