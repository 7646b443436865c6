"""SQL state of the backup service: backups, tasks, schedules.

Owns: the `backup` schema's rows (migrations in migrations/).
Trusts: callers to pass owner ids the frontend has checked; PostgreSQL for atomicity.
Never: stores archive bytes or storage paths (storage.py maps ids to files).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

QUEUED, RUNNING, SUCCEEDED, FAILED = 1, 2, 3, 4
CREATE, RESTORE = 1, 2


@dataclass
class BackupRow:
    backup_id: str
    grain_id: str
    owner_id: str
    size_bytes: int
    sha256: str | None
    created_at: dt.datetime
    grain_title: str = ""
    app_id: str = ""
    app_version: int = 0
    app_title: str = ""
    file_count: int = 0
    schedule_id: str | None = None
    note: str = ""
    job_key: str | None = None


@dataclass
class TaskRow:
    task_id: str
    kind: int
    state: int
    owner_id: str
    created_at: dt.datetime
    grain_id: str = ""
    backup_id: str = ""
    request_key: str = ""
    job_key: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error_refusal: int = 0
    error_message: str = ""
    error_entry: str = ""
    error_retryable: bool = False


@dataclass
class ScheduleRow:
    schedule_id: str
    owner_id: str
    grain_id: str | None
    account_scope: str | None
    every: str
    keep_last: int
    keep_daily: int
    keep_weekly: int
    created_at: dt.datetime
    next_run_at: dt.datetime | None = None
    last_run_at: dt.datetime | None = None
    last_task_ids: list[str] = field(default_factory=list)


class Store:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _one(self, query: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query.encode(), args)
            return await cur.fetchone() if cur.description else None

    async def _all(self, query: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query.encode(), args)
            return list(await cur.fetchall())

    # ---- backups ----

    async def add_backup(self, row: BackupRow) -> bool:
        """Insert; False when a backup for the same job already exists (exactly once)."""
        got = await self._one(
            "INSERT INTO backups (backup_id, grain_id, owner_id, size_bytes, sha256, created_at,"
            " grain_title, app_id, app_version, app_title, file_count, schedule_id, note, job_key)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (job_key) DO NOTHING RETURNING backup_id",
            (
                row.backup_id, row.grain_id, row.owner_id, row.size_bytes, row.sha256,
                row.created_at, row.grain_title, row.app_id, row.app_version, row.app_title,
                row.file_count, row.schedule_id, row.note, row.job_key,
            ),
        )  # fmt: skip
        return got is not None

    async def get_backup(self, backup_id: str, owner: str | None) -> BackupRow | None:
        row = await self._one(
            "SELECT * FROM backups WHERE backup_id = %s AND (%s::text IS NULL OR owner_id = %s)",
            (backup_id, owner, owner),
        )
        return BackupRow(**row) if row else None

    async def backup_for_job(self, job_key: str) -> BackupRow | None:
        row = await self._one("SELECT * FROM backups WHERE job_key = %s", (job_key,))
        return BackupRow(**row) if row else None

    async def list_backups(
        self, owner: str | None, grain_id: str, offset: int, limit: int
    ) -> list[BackupRow]:
        rows = await self._all(
            "SELECT * FROM backups WHERE (%s::text IS NULL OR owner_id = %s)"
            " AND (%s = '' OR grain_id = %s) ORDER BY created_at DESC, backup_id"
            " OFFSET %s LIMIT %s",
            (owner, owner, grain_id, grain_id, offset, limit),
        )
        return [BackupRow(**r) for r in rows]

    async def schedule_backups(self, schedule_id: str, grain_id: str) -> list[BackupRow]:
        rows = await self._all(
            "SELECT * FROM backups WHERE schedule_id = %s AND grain_id = %s",
            (schedule_id, grain_id),
        )
        return [BackupRow(**r) for r in rows]

    async def delete_backup(self, backup_id: str, owner: str | None) -> bool:
        row = await self._one(
            "DELETE FROM backups WHERE backup_id = %s AND (%s::text IS NULL OR owner_id = %s)"
            " RETURNING backup_id",
            (backup_id, owner, owner),
        )
        return row is not None

    # ---- tasks ----

    async def add_task(self, row: TaskRow) -> TaskRow:
        """Insert, or return the existing task with the same request key (or job key)."""
        got = await self._one(
            "INSERT INTO tasks (task_id, kind, state, owner_id, grain_id, backup_id, request_key,"
            " job_key, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
            " RETURNING *",
            (
                row.task_id, row.kind, row.state, row.owner_id, row.grain_id, row.backup_id,
                row.request_key, row.job_key, row.created_at,
            ),
        )  # fmt: skip
        if got:
            return TaskRow(**got)
        if row.job_key:
            found = await self._one("SELECT * FROM tasks WHERE job_key = %s", (row.job_key,))
        else:
            found = await self._one(
                "SELECT * FROM tasks WHERE owner_id = %s AND kind = %s AND request_key = %s"
                " AND created_at > now() - interval '24 hours'",
                (row.owner_id, row.kind, row.request_key),
            )
        if found is None:
            raise RuntimeError("task insert conflicted but no task was found")
        return TaskRow(**found)

    async def get_task(self, task_id: str, owner: str | None) -> TaskRow | None:
        row = await self._one(
            "SELECT * FROM tasks WHERE task_id = %s AND (%s::text IS NULL OR owner_id = %s)",
            (task_id, owner, owner),
        )
        return TaskRow(**row) if row else None

    async def running_tasks(self, owner: str) -> int:
        row = await self._one(
            "SELECT count(*) AS n FROM tasks WHERE owner_id = %s AND state IN (1, 2)"
            " AND job_key IS NULL",
            (owner,),
        )
        return int(row["n"]) if row else 0

    async def start_task(self, task_id: str, bytes_total: int = 0) -> None:
        await self._one(
            "UPDATE tasks SET state = 2, started_at = now(), bytes_total = %s, finished_at = NULL,"
            " error_refusal = 0, error_message = '', error_entry = '' WHERE task_id = %s",
            (bytes_total, task_id),
        )

    async def progress(self, task_id: str, done: int, total: int) -> None:
        await self._one(
            "UPDATE tasks SET bytes_done = %s, bytes_total = GREATEST(bytes_total, %s)"
            " WHERE task_id = %s",
            (done, total, task_id),
        )

    async def finish_task(
        self,
        task_id: str,
        *,
        grain_id: str = "",
        backup_id: str = "",
        refusal: int = 0,
        message: str = "",
        entry: str = "",
        retryable: bool = False,
        failed: bool = False,
    ) -> TaskRow | None:
        row = await self._one(
            "UPDATE tasks SET state = %s, finished_at = now(),"
            " grain_id = CASE WHEN %s = '' THEN grain_id ELSE %s END,"
            " backup_id = CASE WHEN %s = '' THEN backup_id ELSE %s END,"
            " error_refusal = %s, error_message = %s, error_entry = %s, error_retryable = %s"
            " WHERE task_id = %s RETURNING *",
            (
                FAILED if failed else SUCCEEDED, grain_id, grain_id, backup_id, backup_id,
                refusal, message, entry, retryable, task_id,
            ),
        )  # fmt: skip
        return TaskRow(**row) if row else None

    async def fail_orphans(self) -> list[TaskRow]:
        """Manual tasks left QUEUED/RUNNING by a previous process: they cannot resume."""
        rows = await self._all(
            "UPDATE tasks SET state = 4, finished_at = now(), error_retryable = true,"
            " error_message = 'the backup service restarted during this task; try again'"
            " WHERE state IN (1, 2) AND job_key IS NULL RETURNING *",
            (),
        )
        return [TaskRow(**r) for r in rows]

    async def forget_old_tasks(self) -> None:
        await self._one("DELETE FROM tasks WHERE finished_at < now() - interval '7 days'", ())

    # ---- schedules ----

    async def add_schedule(self, row: ScheduleRow) -> ScheduleRow:
        got = await self._one(
            "INSERT INTO schedules (schedule_id, owner_id, grain_id, account_scope, every,"
            " keep_last, keep_daily, keep_weekly, created_at, next_run_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING *",
            (
                row.schedule_id, row.owner_id, row.grain_id, row.account_scope, row.every,
                row.keep_last, row.keep_daily, row.keep_weekly, row.created_at, row.next_run_at,
            ),
        )  # fmt: skip
        assert got is not None
        return ScheduleRow(**got)

    async def get_schedule(self, schedule_id: str) -> ScheduleRow | None:
        row = await self._one("SELECT * FROM schedules WHERE schedule_id = %s", (schedule_id,))
        return ScheduleRow(**row) if row else None

    async def list_schedules(
        self, owner: str | None, grain_id: str, grain_owner: str, offset: int, limit: int
    ) -> list[ScheduleRow]:
        """Schedules of `owner` (None: all); with `grain_id`, only those covering that grain:
        its own, and the account-wide ones of `grain_owner` (the grain's owner)."""
        rows = await self._all(
            "SELECT * FROM schedules WHERE (%s::text IS NULL OR owner_id = %s)"
            " AND (%s = '' OR grain_id = %s OR account_scope = %s)"
            " ORDER BY created_at, schedule_id OFFSET %s LIMIT %s",
            (owner, owner, grain_id, grain_id, grain_owner, offset, limit),
        )
        return [ScheduleRow(**r) for r in rows]

    async def delete_schedule(self, schedule_id: str, owner: str | None) -> bool:
        row = await self._one(
            "DELETE FROM schedules WHERE schedule_id = %s AND (%s::text IS NULL OR owner_id = %s)"
            " RETURNING schedule_id",
            (schedule_id, owner, owner),
        )
        return row is not None

    async def due_schedules(self, now: dt.datetime) -> list[ScheduleRow]:
        rows = await self._all(
            "SELECT * FROM schedules WHERE next_run_at <= %s ORDER BY next_run_at", (now,)
        )
        return [ScheduleRow(**r) for r in rows]

    async def overdue_count(self, now: dt.datetime) -> int:
        row = await self._one(
            "SELECT count(*) AS n FROM schedules WHERE next_run_at < %s - CASE every"
            " WHEN 'hourly' THEN interval '1 hour' WHEN 'daily' THEN interval '1 day'"
            " ELSE interval '7 days' END",
            (now,),
        )
        return int(row["n"]) if row else 0

    async def advance_schedule(
        self, schedule_id: str, slot: dt.datetime, next_run_at: dt.datetime
    ) -> bool:
        """Move a schedule past `slot`; False if another scheduler already did (no double)."""
        row = await self._one(
            "UPDATE schedules SET next_run_at = %s WHERE schedule_id = %s AND next_run_at = %s"
            " RETURNING schedule_id",
            (next_run_at, schedule_id, slot),
        )
        return row is not None

    async def schedule_ran(self, schedule_id: str, task_id: str) -> None:
        await self._one(
            "UPDATE schedules SET last_run_at = now(),"
            # The newest 100 task ids (one per grain of the latest runs).
            " last_task_ids = (array_append(last_task_ids, %s))"
            "[greatest(1, cardinality(last_task_ids) - 98):]"
            " WHERE schedule_id = %s",
            (task_id, schedule_id),
        )
