"""Restoring a backup: an uploaded archive, checked by the validator, into grainmgr's import.

Owns: the restore flow of one task (validator -> app check -> ImportGrain) and the
ImportGrain request stream, including when its trailer may go.
Trusts: the validator (its own confined process, validation.py) to be the only reader of an
uploaded archive: this process never parses one, it forwards what the validator checked and
hands on. grainmgr for which apps are installed.
Never: imports grainmgr code (gRPC only); holds an archive whole in memory; leaves a partial
grain (ImportGrain is all or nothing, and its trailer is sent only after the validator's
final verdict said ok).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grainhouse_backup import archive
from grainhouse_backup.exports import FILE_TYPES
from grainhouse_backup.store import Store, TaskRow
from grainhouse_backup.task_failures import TaskFailure, from_rpc, refusal_of
from grainhouse_backup.validation import Checked
from grainhouse_backup.verdicts import (
    APP_NOT_INSTALLED,
    APP_TOO_OLD,
    TRUNCATED_OR_CORRUPT,
    Limits,
    Verdict,
)
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import grainmgr_pb2 as gpb

_CODES = {v: k for k, v in FILE_TYPES.items()}
# A restore groups consecutive archive parts into one ImportGrain message (GrainArchiveParts)
# until it carries this much data or this many parts: one message per part (two per small
# file) cost both sides more than writing the files. Far below the 8 MiB message limit.
IMPORT_GROUP_BYTES = 1024 * 1024
IMPORT_GROUP_PARTS = 256


async def restore(
    grainmgr: Any,
    store: Store,
    task: TaskRow,
    upload: Path,
    options: bpb.RestoreOptions,
    work: Path,
    *,
    limits: Limits,
    timeout: float,
) -> str:
    """Read the archive once: the confined validator checks it and hands its content on,
    which streams into grainmgr's import while it is checked. The import's trailer (which
    alone makes the grain) goes only after the validator's final verdict said ok; any
    refusal, crash or timeout cancels the import, so no grain and no staging remain."""
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    checked = await Checked.start(str(upload), limits, str(empty))
    try:
        async with asyncio.timeout(timeout):
            return await _validate_and_import(grainmgr, store, checked, task, options)
    except TimeoutError as exc:
        raise TaskFailure(
            "archive refused: the archive took too long to check",
            refusal=TRUNCATED_OR_CORRUPT,
        ) from exc
    finally:
        await checked.close()


async def _validate_and_import(
    grainmgr: Any, store: Store, checked: Checked, task: TaskRow, options: bpb.RestoreOptions
) -> str:
    raw = await checked.metadata()
    if isinstance(raw, Verdict):
        raise refusal_of(raw)
    try:
        meta = archive.parse_metadata(raw)
    except archive.MetadataError as exc:  # not expected: the validator parsed these bytes
        raise TaskFailure("archive refused: bad metadata", refusal="BAD_METADATA") from exc
    del raw
    await _check_app(grainmgr, meta.header)
    title = options.title or (meta.header.title or "Untitled") + " (restored)"
    refused: list[TaskFailure] = []
    call = grainmgr.ImportGrain(
        _import_requests(checked, meta, options, title, task, store, refused)
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


async def _check_app(grainmgr: Any, header: archive.GrainHeader) -> None:
    try:
        reply = await grainmgr.ListPackages(
            gpb.ListPackagesRequest(app_id=header.app_id, include_old_versions=True)
        )
    except grpc.RpcError as exc:
        raise from_rpc(exc, "cannot ask grainmgr for the app") from exc
    versions = [p.version for p in reply.packages if p.app_id == header.app_id]
    if not versions:
        raise TaskFailure(
            f"archive refused: the app {header.app_id!r} is not installed",
            refusal=APP_NOT_INSTALLED,
        )
    if max(versions) < header.app_version:
        raise TaskFailure(
            f"archive refused: the installed app (version {max(versions)}) is older than"
            f" the one that wrote the data (version {header.app_version})",
            refusal=APP_TOO_OLD,
        )


def _import_failure(exc: grpc.RpcError) -> TaskFailure:
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if "not installed" in details:
        return TaskFailure("archive refused: the app is not installed", refusal=APP_NOT_INSTALLED)
    if "too old" in details:
        return TaskFailure("archive refused: the installed app is too old", refusal=APP_TOO_OLD)
    return from_rpc(exc, "import failed")


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


async def _import_requests(
    checked: Checked,
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
                if isinstance(chunk, Verdict):
                    refused.append(refusal_of(chunk))
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
        refused.append(refusal_of(verdict))
        return
    # Only now can grainmgr make the grain: every byte it holds was checked.
    parts.add(trailer=gpb.GrainArchiveTrailer(file_count=len(meta.files), total_bytes=total))
    yield group
