"""The embedded PostgreSQL: the machine's own server binaries, one cluster in the data dir.

Owns: `<data>/postgres/` (the cluster) and the server process while `up` runs.
Trusts: PostgreSQL binaries found under /usr/lib/postgresql/<ver>/bin or on PATH.
Never: runs the server as root (PostgreSQL refuses to): as root it runs as the `postgres`
system user (or `nobody`), which must be able to reach the data directory.

The cluster listens on 127.0.0.1 only, with scram-sha-256 passwords; the administrator
password is generated once into `<data>/secrets/postgres-admin`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from grainhouse_cli.datadir import DataDir, DataDirError

ADMIN_USER = "grainhouse"
DBNAME = "grainhouse"


def find_bin_dir() -> Path:
    """The directory of `postgres` and `initdb`: newest Debian version first, then PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for cand in candidates:
        if (cand / "postgres").exists() and (cand / "initdb").exists():
            return cand
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise DataDirError(
        "PostgreSQL server binaries not found: install Debian's `postgresql` package "
        "(make run does this as root) or set GRAINHOUSE_DATABASE_URL to an external server"
    )


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise DataDirError("running as root but neither a `postgres` nor a `nobody` user exists")


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Every ancestor must let `user` traverse, or initdb fails with a riddle."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & stat.S_IXOTH:
            raise DataDirError(
                f"PostgreSQL runs as user '{user.pw_name}' and cannot enter {parent}: "
                f"chmod o+x {parent}, choose another --data-dir, or set GRAINHOUSE_DATABASE_URL"
            )


def _as_user(user: pwd.struct_passwd | None, argv: list[str], pdeathsig: str) -> list[str]:
    """Wrap `argv` with setpriv: drop to `user` (as root) and die with the supervisor."""
    wrap = ["setpriv", f"--pdeathsig={pdeathsig}"]
    if user is not None:
        wrap += [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    return [*wrap, "--", *argv]


@dataclass
class EmbeddedPostgres:
    data: DataDir
    port: int

    @property
    def cluster(self) -> Path:
        return self.data.root / "postgres"

    def admin_url(self, dbname: str = DBNAME) -> str:
        password = self.data.secret("postgres-admin")
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, dbname=dbname, user=ADMIN_USER, password=password
        )

    def init_if_needed(self) -> None:
        bindir = find_bin_dir()
        user = _run_as()
        if user is not None:
            _check_reachable(self.data.root.resolve(), user)
        if (self.cluster / "PG_VERSION").exists():
            return
        self.cluster.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data.root / "run" / "pg-initdb-pw"
        pwfile.write_text(self.data.secret("postgres-admin") + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        try:
            if user is not None:
                os.chown(self.cluster, user.pw_uid, user.pw_gid)
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            argv = [
                str(bindir / "initdb"),
                "-D", str(self.cluster.resolve()),
                "-U", ADMIN_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile.resolve()}",
                "-E", "UTF8",
                "--locale=C",
                "--no-instructions",
            ]  # fmt: skip
            proc = subprocess.run(
                _as_user(user, argv, "KILL"), capture_output=True, text=True, check=False
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["initdb failed"])[-1]
            raise DataDirError(f"initdb failed: {last}")

    def command(self) -> list[str]:
        bindir = find_bin_dir()
        argv = [
            str(bindir / "postgres"),
            "-D", str(self.cluster.resolve()),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
            "-c", "shared_buffers=64MB",
            "-c", "fsync=on",
            "-c", "logging_collector=off",
        ]  # fmt: skip
        # SIGINT is PostgreSQL's "fast shutdown": what we want if the supervisor dies.
        return _as_user(_run_as(), argv, "INT")

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.admin_url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def ensure_database(self, admin_url_postgres: str | None = None) -> None:
        url = admin_url_postgres or self.admin_url("postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DBNAME,)).fetchone()
            if not row:
                conn.execute(f'CREATE DATABASE "{DBNAME}"')
