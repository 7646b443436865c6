"""SQL for grainmgr's own schema: package and grain records.

Owns: every statement against the `packages` and `grains` tables (schema: migrations/).
Trusts: its callers for validated values; PostgreSQL for atomicity.
Never: touches files, sandboxes or another service's schema; decides policy (grains.py and
packages.py do).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

GRAIN_FIELDS = (
    "grain_id",
    "app_id",
    "package_id",
    "app_version",
    "app_title",
    "owner_id",
    "title",
    "state",
    "size_bytes",
    "created_at",
    "last_used_at",
    "trashed_at",
    "trash_expires_at",
    "last_error",
)
GRAIN_COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in GRAIN_FIELDS)


@dataclass(frozen=True)
class PackageRow:
    package_id: str
    app_id: str
    version: int
    title: str
    marketing_version: str
    manifest: dict[str, Any]
    size_bytes: int
    installed_at: dt.datetime
    grain_count: int
    is_current: bool


@dataclass(frozen=True)
class GrainRow:
    grain_id: str
    app_id: str
    package_id: str | None
    app_version: int
    app_title: str
    owner_id: str
    title: str
    state: str
    size_bytes: int
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    trashed_at: dt.datetime | None
    trash_expires_at: dt.datetime | None
    last_error: str


_PACKAGE_SELECT = """
SELECT p.package_id, p.app_id, p.version, p.title, p.marketing_version, p.manifest,
       p.size_bytes, p.installed_at,
       (SELECT count(*) FROM grains g WHERE g.package_id = p.package_id) AS grain_count,
       p.version = (SELECT max(q.version) FROM packages q WHERE q.app_id = p.app_id)
           AS is_current
FROM packages p
"""


# A grain to start and its app's current package (id and version only: a package's other
# fields never change and are read by id), in one statement.
_GRAIN_TO_START = sql.SQL(
    "SELECT {}, c.package_id AS current_package_id, c.version AS current_version"
    " FROM grains g LEFT JOIN LATERAL (SELECT p.package_id, p.version FROM packages p"
    " WHERE p.app_id = g.app_id ORDER BY p.version DESC LIMIT 1) c ON TRUE"
    " WHERE g.grain_id = %s"
).format(sql.SQL(", ").join(sql.Identifier("g", name) for name in GRAIN_FIELDS))


# Joined into an UPDATE: this statement's commit does not wait for the WAL to reach the disk.
_LAZY_COMMIT = " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS lazy"


@dataclass(frozen=True)
class GrainToStart:
    """A grain's row and its app's current package, as one read saw them."""

    row: GrainRow
    current_package_id: str | None  # None: no package of the app is installed
    current_version: int


class Store:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def _one_statement(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection in autocommit mode, for a single statement (its own
        transaction anyway): no BEGIN and COMMIT round trips, two of the four a pooled
        read costs (the pool's check, BEGIN, the statement, COMMIT). A cold open reads and
        writes the grain's row on its way to the first byte. Handed back transactional, as
        the pool gave it; a connection that cannot be switched back is closed (the pool
        then replaces it), never returned in autocommit mode."""
        async with self.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                try:
                    await conn.set_autocommit(False)
                except Exception:
                    await conn.close()

    # -- packages -----------------------------------------------------------------------------

    async def add_package(
        self,
        package_id: str,
        app_id: str,
        version: int,
        title: str,
        marketing_version: str,
        manifest: dict[str, Any],
        size_bytes: int,
    ) -> bool:
        """Insert; False if this package id is already recorded (idempotent install)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO packages (package_id, app_id, version, title, marketing_version,"
                " manifest, size_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (package_id) DO NOTHING",
                (
                    package_id,
                    app_id,
                    version,
                    title,
                    marketing_version,
                    Jsonb(manifest),
                    size_bytes,
                ),
            )
            return bool(cur.rowcount == 1)

    async def get_package(self, package_id: str) -> PackageRow | None:
        rows = await self._packages("WHERE p.package_id = %s", (package_id,))
        return rows[0] if rows else None

    async def current_package(self, app_id: str) -> PackageRow | None:
        rows = await self._packages(
            "WHERE p.app_id = %s ORDER BY p.version DESC LIMIT 1", (app_id,)
        )
        return rows[0] if rows else None

    async def list_packages(
        self, app_id: str, include_old: bool, offset: int, limit: int
    ) -> list[PackageRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if app_id:
            where.append("p.app_id = %s")
            params.append(app_id)
        if not include_old:
            where.append(
                "p.version = (SELECT max(q.version) FROM packages q WHERE q.app_id = p.app_id)"
            )
        params += [limit, offset]
        return await self._packages(
            sql.SQL(
                "WHERE {} ORDER BY p.title, p.version DESC, p.package_id LIMIT %s OFFSET %s"
            ).format(_and(where)),
            tuple(params),
        )

    async def delete_package(self, package_id: str, orphan_grains: bool) -> int:
        """Delete the record; returns how many grains were orphaned."""
        async with self.pool.connection() as conn, conn.transaction():
            orphaned = 0
            if orphan_grains:
                cur = await conn.execute(
                    "UPDATE grains SET package_id = NULL WHERE package_id = %s", (package_id,)
                )
                orphaned = cur.rowcount
            await conn.execute("DELETE FROM packages WHERE package_id = %s", (package_id,))
            return orphaned

    async def _packages(
        self, tail: str | sql.Composable, params: tuple[Any, ...]
    ) -> list[PackageRow]:
        query = sql.SQL("{} {}").format(sql.SQL(_PACKAGE_SELECT), _sql(tail))
        async with self._one_statement() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            return [PackageRow(**row) for row in await cur.fetchall()]

    # -- grains -------------------------------------------------------------------------------

    async def add_grain(self, row: GrainRow) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                sql.SQL("INSERT INTO grains ({}) VALUES ({})").format(
                    GRAIN_COLUMNS, sql.SQL(", ").join(sql.Placeholder() for _ in GRAIN_FIELDS)
                ),
                (
                    row.grain_id,
                    row.app_id,
                    row.package_id,
                    row.app_version,
                    row.app_title,
                    row.owner_id,
                    row.title,
                    row.state,
                    row.size_bytes,
                    row.created_at,
                    row.last_used_at,
                    row.trashed_at,
                    row.trash_expires_at,
                    row.last_error,
                ),
            )

    async def get_grain(self, grain_id: str) -> GrainRow | None:
        rows = await self._grains("WHERE grain_id = %s", (grain_id,))
        return rows[0] if rows else None

    async def grain_to_start(self, grain_id: str) -> GrainToStart | None:
        """The grain's row and its app's current package id and version, in one statement
        (a start needs both; two reads cost a second connection and its round trips)."""
        async with self._one_statement() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_GRAIN_TO_START, (grain_id,))
            found = await cur.fetchone()
        if found is None:
            return None
        current_id = found.pop("current_package_id")
        current_version = found.pop("current_version")
        return GrainToStart(GrainRow(**found), current_id, current_version or 0)

    async def list_grains(
        self,
        owner_id: str,
        app_id: str,
        trashed: str,  # "exclude", "include" or "only"
        offset: int,
        limit: int,
    ) -> list[GrainRow]:
        where = ["TRUE"]
        params: list[Any] = []
        if owner_id:
            where.append("owner_id = %s")
            params.append(owner_id)
        if app_id:
            where.append("app_id = %s")
            params.append(app_id)
        if trashed == "exclude":
            where.append("trashed_at IS NULL")
        elif trashed == "only":
            where.append("trashed_at IS NOT NULL")
        params += [limit, offset]
        return await self._grains(
            sql.SQL(
                "WHERE {} ORDER BY last_used_at DESC NULLS LAST, grain_id LIMIT %s OFFSET %s"
            ).format(_and(where)),
            tuple(params),
        )

    async def update_grain(self, grain_id: str, *, durable: bool = True, **changes: Any) -> None:
        """Write `changes` to the grain's row. `durable=False`: the commit does not wait for
        the WAL to reach the disk (`synchronous_commit = off` for this transaction only), for
        writes a crash may lose without harm: a live state (starting, running), which grainmgr
        resets at its next start anyway, and last_used_at. A later durable commit, or the WAL
        writer within a fraction of a second, persists them."""
        if not changes or not set(changes) <= set(GRAIN_FIELDS) - {"grain_id"}:
            raise ValueError(f"bad grain columns: {sorted(changes)}")
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(name)) for name in changes
        )
        # One statement in autocommit mode (see _one_statement). Without the disk wait, the
        # setting rides in the statement itself: set_config(..., is_local => true) lasts until
        # the end of the statement's own transaction, whose commit is what it changes.
        lazy = sql.SQL("" if durable else _LAZY_COMMIT)
        async with self._one_statement() as conn:
            await conn.execute(
                sql.SQL("UPDATE grains SET {}{} WHERE grain_id = %s").format(assignments, lazy),
                (*changes.values(), grain_id),
            )

    async def delete_grain(self, grain_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM grains WHERE grain_id = %s", (grain_id,))
            return bool(cur.rowcount == 1)

    async def expired_trash(self, now: dt.datetime) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT grain_id FROM grains WHERE trash_expires_at IS NOT NULL"
                " AND trash_expires_at <= %s",
                (now,),
            )
            return [row[0] for row in await cur.fetchall()]

    async def grains_in_states(self, states: tuple[str, ...]) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT grain_id FROM grains WHERE state = ANY(%s)", (list(states),)
            )
            return [row[0] for row in await cur.fetchall()]

    async def _grains(self, tail: str | sql.Composable, params: tuple[Any, ...]) -> list[GrainRow]:
        query = sql.SQL("SELECT {} FROM grains {}").format(GRAIN_COLUMNS, _sql(tail))
        async with self._one_statement() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            return [GrainRow(**row) for row in await cur.fetchall()]


def _sql(part: str | sql.Composable) -> sql.Composable:
    # Every str here is a constant written in this module, never a caller's value.
    return sql.SQL(part) if isinstance(part, str) else part


def _and(conditions: list[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL(c) for c in conditions)
