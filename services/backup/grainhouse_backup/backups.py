"""Making and restoring backups: grainmgr's archive stream in and out of our ZIP archives.

Owns: the two long flows (export -> archive -> storage; upload -> validator -> import), the
task rows they update, and the metrics and events of their outcomes.
Trusts: grainmgr's ExportGrain stream to be a consistent snapshot (its contract); the
validator (its own confined process) to be the only reader of an uploaded archive: this
process never parses one, it forwards what the validator checked and hands on.
Never: imports grainmgr code (gRPC only); holds an archive whole in memory or in a second
temporary copy; keeps a partial archive or leaves a partial grain (ImportGrain is all or
nothing, and its trailer is sent only after the validator's final verdict said ok).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grainhouse_backup import archive, metrics, validator
from grainhouse_backup.storage import LocalStorage, StorageError
from grainhouse_backup.store import CREATE, QUEUED, RESTORE, BackupRow, Store, TaskRow
from grainhouse_backup.writer_thread import WriterThread
from grainhouse_common import __version__ as platform_version
from grainhouse_common.timestamps import maybe_timestamp as stamp_of
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

log = logging.getLogger("grainhouse.backup")
_TYPES = {1: archive.REGULAR, 2: archive.DIRECTORY, 3: archive.SYMLINK}
_CODES = {v: k for k, v in _TYPES.items()}
# A restore groups consecutive archive parts into one ImportGrain message (GrainArchiveParts)
# until it carries this much data or this many parts: one message per part (two per small
# file) cost both sides more than writing the files. Far below the 8 MiB message limit.
IMPORT_GROUP_BYTES = 1024 * 1024
IMPORT_GROUP_PARTS = 256


class TaskFailure(Exception):
    """Why a task failed, in the words TaskError carries (safe to show)."""

    def __init__(
        self, message: str, *, refusal: str = "", entry: str = "", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.refusal = refusal
        self.entry = entry
        self.retryable = retryable

    @property
    def refusal_number(self) -> int:
        if not self.refusal:
            return 0
        return int(bpb.ArchiveRefusalReason.Value(f"ARCHIVE_REFUSAL_REASON_{self.refusal}"))


def new_id() -> str:
    return secrets.token_hex(16)


def iso(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return str(ts.ToDatetime(dt.UTC).isoformat())


def _from_rpc(exc: grpc.RpcError, doing: str) -> TaskFailure:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    retryable = code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,  # "busy with another export": retry
    )
    if code == grpc.StatusCode.NOT_FOUND:
        return TaskFailure(f"{doing}: the grain does not exist")
    if code == grpc.StatusCode.INTERNAL:
        details = "internal error in grainmgr"
    return TaskFailure(f"{doing}: {details or code.name.lower()}", retryable=retryable)


@dataclass
class Config:
    limits: validator.Limits
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
                meta, header = await self._write(call, sink, task, touch)
            except grpc.RpcError as exc:
                raise _from_rpc(exc, "export failed") from exc
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

    async def _write(
        self,
        call: AsyncIterator[gpb.GrainArchivePart],
        sink: Any,
        task: TaskRow,
        touch: Callable[[], Awaitable[None]] | None,
    ) -> tuple[archive.Metadata, gpb.GrainArchiveHeader]:
        writer = await asyncio.to_thread(archive.ArchiveWriter, sink, self.config.compress_level)
        pipe = WriterThread()
        try:
            return await self._parts(call, writer, pipe, task, touch)
        except ValueError as exc:  # the writer's own check of the stream's order and sizes
            pipe.abandon()
            writer.abandon()
            raise TaskFailure(f"export stream is inconsistent: {exc}") from exc
        except BaseException:
            pipe.abandon()
            writer.abandon()
            raise

    async def _parts(
        self,
        call: AsyncIterator[gpb.GrainArchivePart],
        writer: archive.ArchiveWriter,
        pipe: WriterThread,
        task: TaskRow,
        touch: Callable[[], Awaitable[None]] | None,
    ) -> tuple[archive.Metadata, gpb.GrainArchiveHeader]:
        """Receive parts here and hand the writing to `pipe`'s thread, in stream order."""
        header: gpb.GrainArchiveHeader | None = None
        digest = hashlib.sha256()
        done = 0
        count = 0
        last_report = time.monotonic()
        async for part in call:
            which = part.WhichOneof("part")
            if which == "header":
                if header is not None:
                    raise TaskFailure("export stream has two headers", retryable=True)
                header = part.header
                total = header.grain.size_bytes
                await self.store.start_task(task.task_id, total)
                continue
            if header is None:
                raise TaskFailure("export stream does not start with a header", retryable=True)
            if which == "file":
                f = part.file
                count += 1
                mtime = f.modified_at.ToDatetime(dt.UTC).timestamp()
                kind = _TYPES.get(f.type)
                if kind == archive.DIRECTORY:
                    await pipe.put(writer.add_directory, f.path, f.mode, mtime)
                elif kind == archive.SYMLINK:
                    await pipe.put(writer.add_symlink, f.path, f.symlink_target, mtime)
                elif kind == archive.REGULAR:
                    await pipe.put(writer.begin_file, f.path, f.mode, mtime, f.size_bytes)
                else:
                    raise TaskFailure("export stream has an entry of unknown type")
            elif which == "data":
                await pipe.put(digest.update, part.data)
                await pipe.put(writer.write, part.data)
                done += len(part.data)
                if time.monotonic() - last_report > 2:
                    last_report = time.monotonic()
                    await self.store.progress(task.task_id, done, 0)
                    if touch is not None:
                        await touch()
            elif which == "trailer":
                await pipe.close()  # every part written (or its error raised) before totals
                t = part.trailer
                if (t.file_count, t.total_bytes, t.data_sha256) != (
                    count,
                    done,
                    digest.hexdigest(),
                ):
                    raise TaskFailure("export stream was damaged (totals differ)", retryable=True)
                meta = await asyncio.to_thread(writer.finish, self._header(header))
                await self.store.progress(task.task_id, done, done)
                return meta, header
        raise TaskFailure("export stream ended early (no trailer)", retryable=True)

    @staticmethod
    def _header(h: gpb.GrainArchiveHeader) -> archive.GrainHeader:
        return archive.GrainHeader(
            grain_id=h.grain.grain_id,
            title=h.grain.title,
            owner_account_id=h.grain.owner_account_id,
            app_id=h.app_id,
            app_version=h.app_version,
            package_id=h.grain.package_id,
            app_title=h.grain.app_title,
            app_marketing_version=h.app_marketing_version,
            created_at=iso(h.grain.created_at),
            snapshot_at=iso(h.snapshot_at),
            platform_version=platform_version,
        )

    # ---- restoring -------------------------------------------------------------------------

    async def run_restore(
        self, task: TaskRow, upload: Path, options: bpb.RestoreOptions, work: Path
    ) -> str | None:
        """Validate `upload` (in `work`, removed at the end) and import it; the new grain id."""
        await self.store.start_task(task.task_id, upload.stat().st_size)
        try:
            grain_id = await self._restore(task, upload, options, work)
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

    async def _restore(
        self, task: TaskRow, upload: Path, options: bpb.RestoreOptions, work: Path
    ) -> str:
        """Read the archive once: the confined validator checks it and hands its content on,
        which streams into grainmgr's import while it is checked. The import's trailer (which
        alone makes the grain) goes only after the validator's final verdict said ok; any
        refusal, crash or timeout cancels the import, so no grain and no staging remain."""
        empty = work / "empty"
        empty.mkdir(exist_ok=True)
        checked = await validator.Checked.start(str(upload), self.config.limits, str(empty))
        try:
            async with asyncio.timeout(self.config.validator_timeout):
                return await self._validate_and_import(checked, task, options)
        except TimeoutError as exc:
            raise TaskFailure(
                "archive refused: the archive took too long to check",
                refusal=validator.TRUNCATED_OR_CORRUPT,
            ) from exc
        finally:
            await checked.close()

    async def _validate_and_import(
        self, checked: validator.Checked, task: TaskRow, options: bpb.RestoreOptions
    ) -> str:
        raw = await checked.metadata()
        if isinstance(raw, validator.Verdict):
            raise _refusal(raw)
        try:
            meta = archive.parse_metadata(raw)
        except archive.MetadataError as exc:  # not expected: the validator parsed these bytes
            raise TaskFailure("archive refused: bad metadata", refusal="BAD_METADATA") from exc
        del raw
        await self._check_app(meta.header)
        title = options.title or (meta.header.title or "Untitled") + " (restored)"
        refused: list[TaskFailure] = []
        call = self.grainmgr.ImportGrain(
            _import_requests(checked, meta, options, title, task, self.store, refused)
        )
        try:
            grain = await call
        except grpc.RpcError as exc:
            if refused:  # the stream ended without its trailer: grainmgr made nothing
                raise refused[0] from exc
            raise _import_failure(exc) from exc
        except BaseException:
            call.cancel()  # grainmgr drops its staging directory: no partial grain
            raise
        if refused:  # unreachable (no trailer, no grain); never report a refused one as made
            raise refused[0]
        return str(grain.grain_id)

    async def _check_app(self, header: archive.GrainHeader) -> None:
        try:
            reply = await self.grainmgr.ListPackages(
                gpb.ListPackagesRequest(app_id=header.app_id, include_old_versions=True)
            )
        except grpc.RpcError as exc:
            raise _from_rpc(exc, "cannot ask grainmgr for the app") from exc
        versions = [p.version for p in reply.packages if p.app_id == header.app_id]
        if not versions:
            raise TaskFailure(
                f"archive refused: the app {header.app_id!r} is not installed",
                refusal=validator.APP_NOT_INSTALLED,
            )
        if max(versions) < header.app_version:
            raise TaskFailure(
                f"archive refused: the installed app (version {max(versions)}) is older than"
                f" the one that wrote the data (version {header.app_version})",
                refusal=validator.APP_TOO_OLD,
            )


def _import_failure(exc: grpc.RpcError) -> TaskFailure:
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if "not installed" in details:
        return TaskFailure(
            "archive refused: the app is not installed", refusal=validator.APP_NOT_INSTALLED
        )
    if "too old" in details:
        return TaskFailure(
            "archive refused: the installed app is too old", refusal=validator.APP_TOO_OLD
        )
    return _from_rpc(exc, "import failed")


def _stamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _parse_time(text: str) -> Timestamp | None:
    if not text:
        return None
    try:
        return _stamp(dt.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def _refusal(verdict: validator.Verdict) -> TaskFailure:
    return TaskFailure(
        f"archive refused: {verdict.message}", refusal=verdict.reason, entry=verdict.entry
    )


async def _import_requests(
    checked: validator.Checked,
    meta: archive.Metadata,
    options: bpb.RestoreOptions,
    title: str,
    task: TaskRow,
    store: Store,
    refused: list[TaskFailure],
) -> AsyncIterator[gpb.ImportGrainRequest]:
    """ImportGrain's request stream: every entry and its content as the validator hands it
    on, then the trailer — only if the validator's final verdict is ok. On a refusal it
    records the reason in `refused` and ends without a trailer, which grainmgr refuses.
    After the header, parts go in groups (GrainArchiveParts, see IMPORT_GROUP_BYTES)."""
    h = meta.header
    yield gpb.ImportGrainRequest(
        options=gpb.ImportGrainOptions(
            owner_account_id=options.owner_account_id,
            title=title,
            acting_account_id=options.acting_account_id,
            # The validator checks every file's SHA-256 before the trailer goes: grainmgr
            # need not hash the stream again (nor we for it).
            content_verified=True,
        )
    )
    grain = gpb.Grain(
        grain_id=h.grain_id, app_id=h.app_id, package_id=h.package_id,
        app_version=h.app_version, owner_account_id=h.owner_account_id, title=h.title,
        app_title=h.app_title,
    )  # fmt: skip
    if (created := _parse_time(h.created_at)) is not None:
        grain.created_at.CopyFrom(created)
    header = gpb.GrainArchiveHeader(
        format_version=1,
        grain=grain,
        app_id=h.app_id,
        app_version=h.app_version,
        app_marketing_version=h.app_marketing_version,
    )
    if (snap := _parse_time(h.snapshot_at)) is not None:
        header.snapshot_at.CopyFrom(snap)
    yield gpb.ImportGrainRequest(archive=gpb.GrainArchivePart(header=header))
    total = 0
    last_report = time.monotonic()
    group = gpb.ImportGrainRequest()
    parts = group.archive_parts.parts
    grouped = 0  # data bytes in `group`
    for record in meta.files:
        parts.add(
            file=gpb.FileEntry(
                path=record.path,
                type=_CODES[record.type],
                mode=record.mode,
                modified_at=_stamp(record.mtime),
                size_bytes=record.size,
                symlink_target=record.target,
            )
        )
        if record.type == archive.REGULAR:
            left = record.size
            while left > 0:
                chunk = await checked.data(left)
                if isinstance(chunk, validator.Verdict):
                    refused.append(_refusal(chunk))
                    return
                left -= len(chunk)
                total += len(chunk)
                grouped += len(chunk)
                parts.add(data=chunk)
                del chunk
                if grouped >= IMPORT_GROUP_BYTES:
                    yield group
                    group = gpb.ImportGrainRequest()
                    parts = group.archive_parts.parts
                    grouped = 0
        if len(parts) >= IMPORT_GROUP_PARTS:
            yield group
            group = gpb.ImportGrainRequest()
            parts = group.archive_parts.parts
            grouped = 0
        if time.monotonic() - last_report > 2:
            last_report = time.monotonic()
            await store.progress(task.task_id, total, 0)
    verdict = await checked.verdict()
    if not verdict.ok:
        refused.append(_refusal(verdict))
        return
    # Only now can grainmgr make the grain: every byte it holds was checked.
    parts.add(trailer=gpb.GrainArchiveTrailer(file_count=len(meta.files), total_bytes=total))
    yield group


def task_pb(row: TaskRow) -> bpb.BackupTask:
    msg = bpb.BackupTask(
        task_id=row.task_id,
        kind=row.kind,
        state=row.state,
        grain_id=row.grain_id,
        backup_id=row.backup_id,
        owner_account_id=row.owner_id,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
    )
    for name in ("created_at", "started_at", "finished_at"):
        if (ts := stamp_of(getattr(row, name))) is not None:
            getattr(msg, name).CopyFrom(ts)
    if row.state == 4:
        msg.error.CopyFrom(
            bpb.TaskError(
                refusal=row.error_refusal,
                message=row.error_message,
                entry_name=row.error_entry,
                retryable=row.error_retryable,
            )
        )
    return msg


def backup_pb(row: BackupRow) -> bpb.BackupInfo:
    msg = bpb.BackupInfo(
        backup_id=row.backup_id,
        grain_id=row.grain_id,
        owner_account_id=row.owner_id,
        grain_title=row.grain_title,
        app_id=row.app_id,
        app_version=row.app_version,
        app_title=row.app_title,
        size_bytes=row.size_bytes,
        sha256=row.sha256 or "",
        file_count=row.file_count,
        schedule_id=row.schedule_id or "",
        note=row.note,
    )
    if (ts := stamp_of(row.created_at)) is not None:
        msg.created_at.CopyFrom(ts)
    return msg


__all__ = [
    "CREATE",
    "RESTORE",
    "Config",
    "Engine",
    "StorageError",
    "TaskFailure",
    "backup_pb",
    "new_id",
    "task_pb",
]
