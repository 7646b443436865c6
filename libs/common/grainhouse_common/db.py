"""PostgreSQL helpers: a connection pool that survives restarts, and numbered migrations.

Owns: the service's connection pool and its `<schema>.schema_migrations` table.
Trusts: migration files shipped inside the service package (never user input).
Never: touches another service's schema (its login role cannot, by grants).

Migrations are plain SQL files `NNNN_name.sql` in a package directory, applied in order
at start inside one transaction each, under a transaction-level advisory lock so two
instances starting at once apply each file exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
import zlib
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from grainhouse_common.metrics import DependencyMetrics, watch_db_pool

log = logging.getLogger("grainhouse.db")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_in(package: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration in `package`, in order."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {package}")
    return found


def lock_id(schema: str) -> int:
    """A stable advisory-lock key for one schema's migrations."""
    return zlib.crc32(f"grainhouse.migrate.{schema}".encode())


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str, package: str) -> list[int]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(schema),))
        table = sql.Identifier(schema, "schema_migrations")
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
        cur = await conn.execute(sql.SQL("SELECT version FROM {}").format(table))
        done = {row[0] for row in await cur.fetchall()}
        for version, name, script in migrations_in(package):
            if version in done:
                continue
            await conn.execute(script.encode())  # trusted SQL shipped in the package
            await conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
                (version, name),
            )
            applied_now.append(version)
            log.info("applied migration %s", name)
    return applied_now


# A connection handed back to the pool less than this long ago is handed out again without the
# pool's check (a `SELECT 1` round trip: one more round trip on every query of every service,
# 0.3–0.5 ms each on the cold path of a grain). One that broke in between (a PostgreSQL
# restart) fails its statement once; the pool then drops it and the caller's error edge
# answers UNAVAILABLE, as for any database error.
FRESH_SECONDS = 2.0
_returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


async def _stamp_return(conn: Any) -> None:
    _returned[conn] = time.monotonic()


async def _check_unless_fresh(conn: Any) -> None:
    returned = _returned.get(conn)
    if returned is None or time.monotonic() - returned > FRESH_SECONDS:
        await AsyncConnectionPool.check_connection(conn)


class Database:
    """The service's pool, opened with backoff; `healthy()` is a cheap ping."""

    def __init__(
        self, url: str, schema: str, migrations: str | None, metrics: DependencyMetrics
    ) -> None:
        self.schema = schema
        self.migrations = migrations
        self.metrics = metrics
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=False,
            timeout=5,
            kwargs={"connect_timeout": 3, "options": f"-c search_path={schema}"},
            check=_check_unless_fresh,
            reset=_stamp_return,
        )
        if metrics.service:
            watch_db_pool(metrics.service, self.pool.get_stats)

    async def start(self, stop: asyncio.Event) -> bool:
        """Open the pool and migrate, retrying with backoff until done or `stop` is set."""
        delay = 0.2
        while not stop.is_set():
            try:
                if self.pool.closed:
                    await self.pool.open(wait=True, timeout=5)
                if self.migrations:
                    async with self.pool.connection() as conn:
                        await migrate(conn, self.schema, self.migrations)
                self.metrics.up.labels(dependency="postgres").set(1)
                return True
            except (TimeoutError, psycopg.Error, PoolTimeout, OSError) as exc:
                self.metrics.up.labels(dependency="postgres").set(0)
                log.warning("PostgreSQL not ready, retrying in %.1fs: %s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _ping(self) -> None:
        async with self.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")

    async def healthy(self) -> bool:
        try:
            # A hung server (stopped, partitioned) must read as unhealthy, not hang us.
            await asyncio.wait_for(self._ping(), 3)
            ok = True
        except Exception:
            ok = False
        self.metrics.up.labels(dependency="postgres").set(1 if ok else 0)
        return ok

    async def close(self) -> None:
        await self.pool.close()
