"""Backup and restore tasks: their rows, their outcomes, and who runs which flow.

Owns: the task rows of both long flows (export -> archive -> storage, in exports.py; upload
-> validator -> import, in restores.py), the backup rows and archives a finished backup
leaves, and the metrics and events of their outcomes.
Trusts: the flows to raise `TaskFailure` for a task's own failures; storage to commit or
abort an archive whole.
Never: imports grainmgr code (gRPC only); keeps an archive without its row, or a partial one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grainhouse_backup import archive, metrics, restores
from grainhouse_backup.exports import write_archive
from grainhouse_backup.messages import task_pb
from grainhouse_backup.storage import LocalStorage
from grainhouse_backup.store import QUEUED, BackupRow, Store, TaskRow
from grainhouse_backup.task_failures import TaskFailure, from_rpc
from grainhouse_backup.verdicts import Limits
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

log = logging.getLogger("grainhouse.backup")


def new_id() -> str:
    return secrets.token_hex(16)


@dataclass
class Config:
    limits: Limits
    compress_level: int = 6
    validator_timeout: float = 900.0
    max_archive_bytes: int = 10 * 1024**3
    max_tasks_per_owner: int = 4


class Engine:
    """Runs backup and restore tasks; the gRPC edge and the job worker call it."""

    def __init__(
        self,
        store: Store,
        storage: LocalStorage,
        grainmgr: Any,  # grainmgr_pb2_grpc.GrainManagerStub
        config: Config,
        publish: Callable[[str, bytes], Awaitable[None]],
    ) -> None:
        self.store = store
        self.storage = storage
        self.grainmgr = grainmgr
        self.config = config
        self.publish = publish
        self.background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---- making a backup ------------------------------------------------------------------

    async def new_task(
        self,
        kind: int,
        owner: str,
        grain_id: str = "",
        request_key: str = "",
        job_key: str | None = None,
        backup_id: str = "",
    ) -> tuple[TaskRow, bool]:
        """A new QUEUED task, or the existing one with the same request/job key (then False)."""
        task_id = new_id()
        row = await self.store.add_task(
            TaskRow(
                task_id=task_id, kind=kind, state=QUEUED, owner_id=owner, grain_id=grain_id,
                backup_id=backup_id, request_key=request_key, job_key=job_key,
                created_at=dt.datetime.now(dt.UTC),
            )
        )  # fmt: skip
        return row, row.task_id == task_id

    async def run_backup(
        self,
        task: TaskRow,
        *,
        acting: str = "",
        note: str = "",
        schedule_id: str | None = None,
        job_key: str | None = None,
        touch: Callable[[], Awaitable[None]] | None = None,
    ) -> BackupRow | None:
        """Run one create task to its end; never raises for the task's own failures."""
        trigger = "scheduled" if schedule_id else "manual"
        start = time.monotonic()
        await self.store.start_task(task.task_id)
        try:
            row = await self._backup(task, acting, note, schedule_id, job_key, touch)
        except TaskFailure as failure:
            await self._failed(task, failure, trigger)
            return None
        except Exception:
            log.exception("backup task failed unexpectedly")
            await self._failed(task, TaskFailure("internal error", retryable=True), trigger)
            return None
        finally:
            metrics.RUN_SECONDS.labels(trigger=trigger).observe(time.monotonic() - start)
        metrics.RUNS.labels(trigger=trigger, outcome="ok").inc()
        metrics.LAST_SUCCESS.set_to_current_time()
        metrics.ARCHIVE_BYTES.observe(row.size_bytes)
        metrics.WRITTEN_BYTES.inc(row.size_bytes)
        done = await self.store.finish_task(task.task_id, backup_id=row.backup_id)
        await self._announce(done)
        return row

    async def _failed(self, task: TaskRow, failure: TaskFailure, trigger: str) -> None:
        metrics.RUNS.labels(trigger=trigger, outcome="failed").inc()
        log.warning("backup failed: %s", failure.message, extra={"task_id": task.task_id})
        done = await self.store.finish_task(
            task.task_id, message=failure.message, retryable=failure.retryable, failed=True
        )
        await self._announce(done)
        await self.publish(
            "grainhouse.backup.run.failed",
            bpb.BackupTask(task_id=task.task_id, grain_id=task.grain_id).SerializeToString(),
        )

    async def _announce(self, row: TaskRow | None) -> None:
        if row is not None:
            await self.publish("grainhouse.backup.task.finished", task_pb(row).SerializeToString())

    async def _backup(
        self,
        task: TaskRow,
        acting: str,
        note: str,
        schedule_id: str | None,
        job_key: str | None,
        touch: Callable[[], Awaitable[None]] | None,
    ) -> BackupRow:
        backup_id = new_id()
        sink = self.storage.writer(backup_id)
        try:
            call = self.grainmgr.ExportGrain(
                gpb.ExportGrainRequest(grain_id=task.grain_id, acting_account_id=acting)
            )
            try:
                meta, header = await write_archive(
                    call,
                    sink,
                    task,
                    touch,
                    store=self.store,
                    compress_level=self.config.compress_level,
                )
            except grpc.RpcError as exc:
                raise from_rpc(exc, "export failed") from exc
            finally:
                call.cancel()  # no-op when the stream ended; frees grainmgr's snapshot if not
            written = await asyncio.to_thread(sink.commit)
        except BaseException:
            sink.abort()
            raise
        try:
            return await self._record(
                task, backup_id, written, meta, header, note, schedule_id, job_key
            )
        except BaseException:
            self.storage.delete(backup_id)  # never an archive without its row
            raise

    async def _record(
        self,
        task: TaskRow,
        backup_id: str,
        written: Any,
        meta: archive.Metadata,
        header: gpb.GrainArchiveHeader,
        note: str,
        schedule_id: str | None,
        job_key: str | None,
    ) -> BackupRow:
        row = BackupRow(
            backup_id=backup_id,
            grain_id=task.grain_id,
            owner_id=task.owner_id,
            size_bytes=written.size_bytes,
            sha256=written.sha256,
            created_at=header.snapshot_at.ToDatetime(dt.UTC)
            if header.HasField("snapshot_at")
            else dt.datetime.now(dt.UTC),
            grain_title=header.grain.title,
            app_id=header.app_id,
            app_version=header.app_version,
            app_title=header.grain.app_title,
            file_count=len(meta.files),
            schedule_id=schedule_id,
            note=note,
            job_key=job_key,
        )
        if not await self.store.add_backup(row):
            # Another delivery of the same scheduled job already made it: keep only that one.
            self.storage.delete(backup_id)
            existing = await self.store.backup_for_job(job_key or "")
            assert existing is not None
            return existing
        return row

    # ---- restoring -------------------------------------------------------------------------

    async def run_restore(
        self, task: TaskRow, upload: Path, options: bpb.RestoreOptions, work: Path
    ) -> str | None:
        """Validate `upload` (in `work`, removed at the end) and import it; the new grain id."""
        await self.store.start_task(task.task_id, upload.stat().st_size)
        try:
            grain_id = await restores.restore(
                self.grainmgr,
                self.store,
                task,
                upload,
                options,
                work,
                limits=self.config.limits,
                timeout=self.config.validator_timeout,
            )
        except TaskFailure as failure:
            outcome = "rejected" if failure.refusal else "failed"
            metrics.RESTORES.labels(outcome=outcome).inc()
            log.warning("restore refused: %s", failure.message, extra={"task_id": task.task_id})
            done = await self.store.finish_task(
                task.task_id,
                refusal=failure.refusal_number,
                message=failure.message,
                entry=failure.entry,
                retryable=failure.retryable,
                failed=True,
            )
            await self._announce(done)
            return None
        except Exception:
            log.exception("restore task failed unexpectedly")
            metrics.RESTORES.labels(outcome="failed").inc()
            done = await self.store.finish_task(
                task.task_id, message="internal error", retryable=True, failed=True
            )
            await self._announce(done)
            return None
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        metrics.RESTORES.labels(outcome="ok").inc()
        done = await self.store.finish_task(task.task_id, grain_id=grain_id)
        await self._announce(done)
        return grain_id


__all__ = ["Config", "Engine", "new_id"]
