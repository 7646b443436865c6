"""Task and backup rows as the protobuf messages backup.proto defines.

Owns: the mapping from store rows to `BackupTask` and `BackupInfo`.
Trusts: the rows (they come from our own store).
Never: puts a storage path or anything not in the row into a message.
"""

from __future__ import annotations

from typing import cast

from grainhouse_backup.store import BackupRow, TaskRow
from grainhouse_common.timestamps import maybe_timestamp as stamp_of
from grainhouse_proto import backup_pb2 as bpb


def task_pb(row: TaskRow) -> bpb.BackupTask:
    msg = bpb.BackupTask(
        task_id=row.task_id,
        # The row holds the enums' numbers (store.py's constants are backup.proto's values).
        kind=cast(bpb.TaskKind, row.kind),
        state=cast(bpb.TaskState, row.state),
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
                refusal=cast(bpb.ArchiveRefusalReason, row.error_refusal),
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
