"""The gRPC edge of backup (backup.proto): decode, check, hand to the engine, map errors.

Owns: the Backup servicer and its request checks (required fields, sizes, paging).
Trusts: the frontend's owner ids (it checked them with auth); nothing in an uploaded archive.
Never: makes a decision about people; reads grain files; lets a storage path into a reply.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from grainhouse_backup import retention, schedules
from grainhouse_backup.backups import Engine, new_id
from grainhouse_backup.messages import backup_pb, task_pb
from grainhouse_backup.storage import StorageError
from grainhouse_backup.store import CREATE, RESTORE, ScheduleRow, Store
from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error
from grainhouse_common.timestamps import maybe_timestamp as stamp_of
from grainhouse_proto import backup_pb2 as pb
from grainhouse_proto import backup_pb2_grpc
from grainhouse_proto import common_pb2 as cpb
from grainhouse_proto import grainmgr_pb2 as gpb

MAX_PAGE = 200
DEFAULT_PAGE = 50
MAX_CHUNK = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _owner(owner: str, all_owners: bool) -> str | None:
    if all_owners:
        return None
    if not owner:
        raise GrainhouseError(Kind.INVALID, "owner_account_id is required")
    return owner


def _page(page: cpb.PageRequest) -> tuple[int, int]:
    size = page.page_size or DEFAULT_PAGE
    if size > MAX_PAGE:
        size = MAX_PAGE
    try:
        offset = int(page.page_token or "0")
    except ValueError as exc:
        raise GrainhouseError(Kind.INVALID, "page.page_token is not valid") from exc
    if offset < 0:
        raise GrainhouseError(Kind.INVALID, "page.page_token is not valid")
    return offset, size


def _next(offset: int, size: int, got: int) -> cpb.PageResponse:
    return cpb.PageResponse(next_page_token=str(offset + size) if got > size else "")


def filename(info: pb.BackupInfo) -> str:
    title = _UNSAFE.sub("_", info.grain_title).strip(" ._")[:80] or "grain"
    day = info.created_at.ToDatetime(dt.UTC).strftime("%Y-%m-%d")
    return f"{title}-{day}.zip"


def schedule_pb(row: ScheduleRow) -> pb.Schedule:
    msg = pb.Schedule(
        schedule_id=row.schedule_id,
        owner_account_id=row.owner_id,
        frequency=schedules.FREQUENCY[row.every],
        retention=pb.Retention(
            keep_last=row.keep_last, keep_daily=row.keep_daily, keep_weekly=row.keep_weekly
        ),
        last_task_ids=row.last_task_ids,
    )
    if row.grain_id:
        msg.grain_id = row.grain_id
    else:
        msg.all_grains_of_account_id = row.account_scope or ""
    for name in ("created_at", "next_run_at", "last_run_at"):
        if (ts := stamp_of(getattr(row, name))) is not None:
            getattr(msg, name).CopyFrom(ts)
    return msg


class BackupService(backup_pb2_grpc.BackupServicer):
    def __init__(
        self, store: Store, engine: Engine, grainmgr: Any, *, period_override: int = 0
    ) -> None:
        self.store = store
        self.engine = engine
        self.grainmgr = grainmgr
        self.period_override = period_override

    async def _grain(self, grain_id: str) -> gpb.Grain:
        try:
            return cast(
                gpb.Grain, await self.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=grain_id))
            )
        except Exception as exc:
            if hasattr(exc, "code"):
                raise from_rpc_error(exc) from exc
            raise

    async def _limit(self, owner: str) -> None:
        if await self.store.running_tasks(owner) >= self.engine.config.max_tasks_per_owner:
            raise GrainhouseError(Kind.OVERLOADED, "too many backup tasks running; retry later")

    # ---- backups ----

    async def CreateBackup(self, request: pb.CreateBackupRequest, context: Any) -> pb.BackupTask:
        if not request.grain_id:
            raise GrainhouseError(Kind.INVALID, "grain_id is required")
        owner = _owner(request.owner_account_id, False) or ""
        if len(request.note) > 200:
            raise GrainhouseError(Kind.INVALID, "note is longer than 200 characters")
        grain = await self._grain(request.grain_id)
        if grain.owner_account_id != owner:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        if grain.state == gpb.GRAIN_STATE_TRASHED:
            raise GrainhouseError(Kind.CONFLICT, "the grain is in the trash")
        await self._limit(owner)
        task, created = await self.engine.new_task(
            CREATE, owner, request.grain_id, request.request_key
        )
        if created:
            self.engine.spawn(
                self.engine.run_backup(task, acting=request.acting_account_id, note=request.note)
            )
        return task_pb(task)

    async def GetTask(self, request: pb.GetTaskRequest, context: Any) -> pb.BackupTask:
        owner = _owner(request.owner_account_id, request.all_owners)
        row = await self.store.get_task(request.task_id, owner)
        if row is None:
            raise GrainhouseError(Kind.NOT_FOUND, "no such task")
        return task_pb(row)

    async def ListBackups(
        self, request: pb.ListBackupsRequest, context: Any
    ) -> pb.ListBackupsResponse:
        owner = _owner(request.owner_account_id, request.all_owners)
        offset, size = _page(request.page)
        rows = await self.store.list_backups(owner, request.grain_id, offset, size + 1)
        return pb.ListBackupsResponse(
            backups=[backup_pb(r) for r in rows[:size]], page=_next(offset, size, len(rows))
        )

    async def _stored(self, backup_id: str, owner_account_id: str, all_owners: bool) -> Any:
        """The backup's row, if its owner matches and its archive is still stored."""
        row = await self.store.get_backup(backup_id, _owner(owner_account_id, all_owners))
        if row is None or not self.engine.storage.exists(row.backup_id):
            raise GrainhouseError(Kind.NOT_FOUND, "no such backup")
        return row

    async def GetBackup(self, request: pb.GetBackupRequest, context: Any) -> pb.DownloadHeader:
        row = await self._stored(request.backup_id, request.owner_account_id, request.all_owners)
        info = backup_pb(row)
        return pb.DownloadHeader(
            backup=info,
            offset=0,
            length=row.size_bytes,
            filename=filename(info),
            content_type="application/zip",
        )

    async def DownloadBackup(
        self, request: pb.DownloadBackupRequest, context: Any
    ) -> AsyncIterator[pb.DownloadBackupChunk]:
        row = await self._stored(request.backup_id, request.owner_account_id, request.all_owners)
        size = row.size_bytes
        if request.offset > size:
            # OUT_OF_RANGE, as backup.proto promises (Kind has no such row: abort directly).
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "offset is beyond the end")
        length = size - request.offset
        if request.length:
            length = min(length, request.length)
        info = backup_pb(row)
        yield pb.DownloadBackupChunk(
            header=pb.DownloadHeader(
                backup=info,
                offset=request.offset,
                length=length,
                filename=filename(info),
                content_type="application/zip",
            )
        )
        if length == 0:
            return
        chunks = self.engine.storage.read(row.backup_id, request.offset, length)
        try:
            while chunk := await asyncio.to_thread(next, chunks, b""):
                yield pb.DownloadBackupChunk(data=chunk)
        except StorageError as exc:
            raise GrainhouseError(Kind.INTERNAL, "the stored archive is damaged") from exc

    async def DeleteBackup(
        self, request: pb.DeleteBackupRequest, context: Any
    ) -> pb.DeleteBackupResponse:
        owner = _owner(request.owner_account_id, request.all_owners)
        if not await self.store.delete_backup(request.backup_id, owner):
            raise GrainhouseError(Kind.NOT_FOUND, "no such backup")
        self.engine.storage.delete(request.backup_id)
        return pb.DeleteBackupResponse()

    async def RestoreBackup(
        self, request_iterator: AsyncIterator[pb.RestoreBackupRequest], context: Any
    ) -> pb.BackupTask:
        options, stream = await rpc.stream_head(request_iterator, "options", "restore")
        owner = _owner(options.owner_account_id, False) or ""
        limit = self.engine.config.max_archive_bytes
        if not options.backup_id:
            if options.upload_size_bytes == 0:
                raise GrainhouseError(Kind.INVALID, "upload_size_bytes is required")
            if options.upload_size_bytes > limit:
                raise GrainhouseError(
                    Kind.TOO_LARGE, f"ARCHIVE_TOO_LARGE: the archive is larger than {limit} bytes"
                )
        await self._limit(owner)
        work = self.engine.storage.work_dir()
        upload = work / "archive.zip"
        try:
            if options.backup_id:
                row = await self.store.get_backup(options.backup_id, owner)
                if row is None or not self.engine.storage.exists(row.backup_id):
                    raise GrainhouseError(Kind.NOT_FOUND, "no such backup")
                async for _ in stream:
                    raise GrainhouseError(Kind.INVALID, "no chunk may follow a backup_id")
                await asyncio.to_thread(self.engine.storage.copy_plain, row.backup_id, upload)
            else:
                await self._receive(stream, upload, options.upload_size_bytes)
            task, created = await self.engine.new_task(
                RESTORE, owner, request_key=options.request_key, backup_id=options.backup_id
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        if not created:
            await asyncio.to_thread(shutil.rmtree, work, True)  # a retry: the first task stands
            return task_pb(task)
        self.engine.spawn(self.engine.run_restore(task, upload, options, work))
        return task_pb(task)

    async def _receive(
        self, stream: AsyncIterator[pb.RestoreBackupRequest], upload: Any, expected: int
    ) -> None:
        got = 0
        with upload.open("xb") as out:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise GrainhouseError(Kind.INVALID, "options may be sent only once")
                chunk = message.chunk
                if len(chunk) > MAX_CHUNK:
                    raise GrainhouseError(Kind.INVALID, "a chunk is larger than 1 MiB")
                got += len(chunk)
                if got > expected:
                    raise GrainhouseError(Kind.INVALID, "more bytes than upload_size_bytes")
                await asyncio.to_thread(out.write, chunk)
        if got != expected:
            raise GrainhouseError(Kind.INVALID, "fewer bytes than upload_size_bytes")

    # ---- schedules ----

    async def CreateSchedule(self, request: pb.CreateScheduleRequest, context: Any) -> pb.Schedule:
        owner = _owner(request.owner_account_id, False) or ""
        scope = request.WhichOneof("scope")
        if scope is None:
            raise GrainhouseError(Kind.INVALID, "a scope (grain_id or all_grains_of_account_id)")
        every = schedules.EVERY.get(request.frequency)
        if every is None:
            raise GrainhouseError(Kind.INVALID, "frequency is required")
        r = request.retention
        rule = retention.Rule(r.keep_last, r.keep_daily, r.keep_weekly)
        if rule.off:
            raise GrainhouseError(Kind.INVALID, "retention must keep something")
        if max(r.keep_last, r.keep_daily, r.keep_weekly) > 10_000:
            raise GrainhouseError(Kind.INVALID, "retention counts are at most 10000")
        grain_id = request.grain_id if scope == "grain_id" else None
        if grain_id is not None:
            grain = await self._grain(grain_id)
            if grain.owner_account_id != owner:
                raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        elif not request.all_grains_of_account_id:
            raise GrainhouseError(Kind.INVALID, "all_grains_of_account_id is empty")
        sid = new_id()
        now = dt.datetime.now(dt.UTC)
        row = await self.store.add_schedule(
            ScheduleRow(
                schedule_id=sid, owner_id=owner, grain_id=grain_id,
                account_scope=None if grain_id else request.all_grains_of_account_id,
                every=every, keep_last=r.keep_last, keep_daily=r.keep_daily,
                keep_weekly=r.keep_weekly, created_at=now,
                next_run_at=schedules.next_slot(sid, every, now, self.period_override),
            )
        )  # fmt: skip
        return schedule_pb(row)

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Any
    ) -> pb.ListSchedulesResponse:
        owner = _owner(request.owner_account_id, request.all_owners)
        offset, size = _page(request.page)
        grain_owner = ""
        if request.grain_id:
            # As CreateSchedule: a grain filter names a grain the caller owns; another
            # owner's grain is NOT_FOUND, exactly like one that does not exist.
            grain = await self._grain(request.grain_id)
            if owner is not None and grain.owner_account_id != owner:
                raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
            grain_owner = grain.owner_account_id
        rows = await self.store.list_schedules(
            owner, request.grain_id, grain_owner, offset, size + 1
        )
        return pb.ListSchedulesResponse(
            schedules=[schedule_pb(r) for r in rows[:size]], page=_next(offset, size, len(rows))
        )

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Any
    ) -> pb.DeleteScheduleResponse:
        owner = _owner(request.owner_account_id, request.all_owners)
        if not await self.store.delete_schedule(request.schedule_id, owner):
            raise GrainhouseError(Kind.NOT_FOUND, "no such schedule")
        return pb.DeleteScheduleResponse()


def register(server: Any, service: BackupService) -> None:
    backup_pb2_grpc.add_BackupServicer_to_server(service, server)
