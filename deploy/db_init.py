#!/usr/bin/env python3
"""`grainhouse-db-init`: compose's one-shot job that gives each service its role and schema.

Owns: nothing beyond one run of `grainhouse_common.provision.ensure` per service (the same
code `grainhouse up` runs), so compose and the process supervisor provision identically.
Trusts: the administrator password file and each service's database-URL secret file (the
password is taken from the URL, so the secret the service reads is the one provisioned).
Never: prints a password or a URL holding one; grants a role anything outside its schema.

Exit codes: 0 done, 1 PostgreSQL unreachable or refused, 2 bad arguments or secret files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg
from psycopg import conninfo

from grainhouse_common import provision


def read_secret(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def password_from_url(service: str, url: str, dbname: str) -> str:
    """The password in a service's URL, after checking the URL names the right role."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"{service}: the database URL cannot be parsed") from exc
    role = provision.role_for(service)
    if parts.get("user") != role:
        raise ValueError(f"{service}: the database URL must log in as {role}")
    if parts.get("dbname") != dbname:
        raise ValueError(f"{service}: the database URL must name database {dbname}")
    password = parts.get("password")
    if not password:
        raise ValueError(f"{service}: the database URL has no password")
    return str(password)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="grainhouse-db-init", description=__doc__)
    parser.add_argument("--host", default="postgres")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--dbname", default="grainhouse")
    parser.add_argument("--admin-user", default="grainhouse")
    parser.add_argument("--admin-password-file", type=Path, required=True)
    parser.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="SVC=URL_FILE",
        help="a service and the secret file holding its database URL; repeat per service",
    )
    parser.add_argument("--wait-seconds", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted: dict[str, str] = {}
    try:
        admin_password = read_secret(args.admin_password_file)
        for item in args.service:
            service, sep, path = item.partition("=")
            if not sep or service not in provision.SERVICES_WITH_DB:
                raise ValueError(
                    f"--service {service!r}: expected one of "
                    f"{', '.join(provision.SERVICES_WITH_DB)} as SVC=FILE"
                )
            url = read_secret(Path(path))
            wanted[service] = password_from_url(service, url, args.dbname)
    except (OSError, ValueError) as exc:
        print(f"grainhouse-db-init: {exc}", file=sys.stderr)
        return 2
    if not wanted:
        print("grainhouse-db-init: no --service given", file=sys.stderr)
        return 2
    admin_url = conninfo.make_conninfo(
        host=args.host,
        port=args.port,
        dbname=args.dbname,
        user=args.admin_user,
        password=admin_password,
        connect_timeout=5,
    )
    # compose starts us once PostgreSQL is healthy, but a restart of the database between
    # its healthcheck and our connection is possible: retry for a while, then give up.
    deadline = time.monotonic() + args.wait_seconds
    while True:
        try:
            for service, password in wanted.items():
                provision.ensure(admin_url, args.dbname, service, password)
                print(f"grainhouse-db-init: {service}: role and schema ready")
            return 0
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                # The message names host and reason, never the password.
                print(f"grainhouse-db-init: PostgreSQL: {exc}".splitlines()[0], file=sys.stderr)
                return 1
            time.sleep(1.0)
        except psycopg.Error as exc:
            print(f"grainhouse-db-init: PostgreSQL refused: {exc}".splitlines()[0], file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
