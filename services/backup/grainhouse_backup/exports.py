"""Making a backup's archive: grainmgr's export stream written into one of our ZIP archives.

Owns: the order and totals checks of an export stream, and the hand-over of its parts to the
archive writer's thread; the task's progress while it runs.
Trusts: grainmgr's ExportGrain stream to be a consistent snapshot (its contract), but not to
be well formed: a stream out of order, or whose trailer disagrees with what came, fails.
Never: holds an archive whole in memory; keeps a partial archive (the caller aborts the sink
on any error).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from grainhouse_backup import archive
from grainhouse_backup.store import Store, TaskRow
from grainhouse_backup.task_failures import TaskFailure
from grainhouse_backup.writer_thread import WriterThread
from grainhouse_common import __version__ as platform_version
from grainhouse_proto import grainmgr_pb2 as gpb

# FileEntry.type (grainmgr.proto) -> the archive's entry kinds.
FILE_TYPES = {
    gpb.FILE_TYPE_REGULAR: archive.REGULAR,
    gpb.FILE_TYPE_DIRECTORY: archive.DIRECTORY,
    gpb.FILE_TYPE_SYMLINK: archive.SYMLINK,
}


def iso(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return str(ts.ToDatetime(dt.UTC).isoformat())


async def write_archive(
    call: AsyncIterator[gpb.GrainArchivePart],
    sink: Any,
    task: TaskRow,
    touch: Callable[[], Awaitable[None]] | None,
    *,
    store: Store,
    compress_level: int,
) -> tuple[archive.Metadata, gpb.GrainArchiveHeader]:
    writer = await asyncio.to_thread(archive.ArchiveWriter, sink, compress_level)
    pipe = WriterThread()
    try:
        return await _parts(call, writer, pipe, task, touch, store)
    except ValueError as exc:  # the writer's own check of the stream's order and sizes
        pipe.abandon()
        writer.abandon()
        raise TaskFailure(f"export stream is inconsistent: {exc}") from exc
    except BaseException:
        pipe.abandon()
        writer.abandon()
        raise


async def _parts(
    call: AsyncIterator[gpb.GrainArchivePart],
    writer: archive.ArchiveWriter,
    pipe: WriterThread,
    task: TaskRow,
    touch: Callable[[], Awaitable[None]] | None,
    store: Store,
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
            await store.start_task(task.task_id, total)
            continue
        if header is None:
            raise TaskFailure("export stream does not start with a header", retryable=True)
        if which == "file":
            f = part.file
            count += 1
            mtime = f.modified_at.ToDatetime(dt.UTC).timestamp()
            kind = FILE_TYPES.get(f.type)
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
                await store.progress(task.task_id, done, 0)
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
            meta = await asyncio.to_thread(writer.finish, _header(header))
            await store.progress(task.task_id, done, done)
            return meta, header
    raise TaskFailure("export stream ended early (no trailer)", retryable=True)


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
