"""REST resources for backups, restores and backup schedules: the frontend side of backup.proto.

Owns: /api/v1/grains/{grain_id}/backups, /api/v1/backups…, /api/v1/restores,
/api/v1/backup-schedules…, the JSON form of backup tasks (ids `bkt_…` under /api/v1/tasks), and
(with backup_downloads.py) the archive downloads.
Trusts: auth.Authorize for who owns a grain; backup for its own records, which it filters by
the owner id given here (another owner's backup is NOT_FOUND, so ids cannot be probed).
Never: holds an archive whole (downloads and uploads stream in ≤ 1 MiB pieces); names a
storage path; lets one account see, fetch or delete another's backups or tasks.

Decisions written down here:
- A backup belongs to the grain's owner; only the owner backs a grain up (editors cannot: an
  archive is the whole grain, including what a role would hide).
- A refused archive fails its task; the task's `error` is a problem document (status 422) whose
  `reason` names the rule (`zip_slip`, `ratio_bomb`, …) and `entry` the offending entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.backup_downloads import ID_RE, backup_info, download_response
from grainhouse_frontend.identity import Caller
from grainhouse_frontend.problem import TYPE_BASE
from grainhouse_frontend.rest_io import field, iso, json_body, page_json, page_params, page_schema
from grainhouse_proto import auth_pb2, common_pb2
from grainhouse_proto import backup_pb2 as bpb

if TYPE_CHECKING:
    from grainhouse_frontend.api import ApiRoute, Deps

TASK_PREFIX = "bkt_"
CHUNK = 1024 * 1024
UPLOAD_TIMEOUT = 6 * 3600
FREQUENCY = {"hourly": bpb.FREQUENCY_HOURLY, "daily": bpb.FREQUENCY_DAILY,
             "weekly": bpb.FREQUENCY_WEEKLY}  # fmt: skip
FREQUENCY_NAME = {v: k for k, v in FREQUENCY.items()}
_STATE = {
    bpb.TASK_STATE_QUEUED: "running",
    bpb.TASK_STATE_RUNNING: "running",
    bpb.TASK_STATE_SUCCEEDED: "succeeded",
    bpb.TASK_STATE_FAILED: "failed",
}

BACKUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "grain_id", "size_bytes", "sha256", "download_url"],
    "properties": {
        "id": {"type": "string"}, "grain_id": {"type": "string"},
        "grain_title": {"type": "string"}, "app_id": {"type": "string"},
        "app_version": {"type": "integer"}, "app_title": {"type": "string"},
        "created_at": {"type": ["string", "null"]}, "size_bytes": {"type": "integer"},
        "sha256": {"type": "string"}, "file_count": {"type": "integer"},
        "schedule_id": {"type": ["string", "null"]}, "note": {"type": "string"},
        "download_url": {"type": "string"},
    },
}  # fmt: skip
SCHEDULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "frequency", "retention"],
    "properties": {
        "id": {"type": "string"}, "grain_id": {"type": ["string", "null"]},
        "all_grains": {"type": "boolean"}, "frequency": {"enum": list(FREQUENCY)},
        "retention": {"type": "object"}, "next_run_at": {"type": ["string", "null"]},
        "last_run_at": {"type": ["string", "null"]},
        "last_task_ids": {"type": "array", "items": {"type": "string"}},
    },
}  # fmt: skip


# -- JSON forms -----------------------------------------------------------------------------


def grain_filter(request: Request) -> str:
    """The optional `grain_id` query filter of the listings ("" = all of the caller's)."""
    grain_id = request.query_params.get("grain_id", "")
    if len(grain_id) > 80:
        raise GrainhouseError(Kind.INVALID, "grain_id: not valid")
    return grain_id


def backup_json(b: bpb.BackupInfo) -> dict[str, Any]:
    return {
        "id": b.backup_id,
        "grain_id": b.grain_id,
        "grain_title": b.grain_title,
        "app_id": b.app_id,
        "app_version": b.app_version,
        "app_title": b.app_title,
        "created_at": iso(b.created_at),
        "size_bytes": b.size_bytes,
        "sha256": b.sha256,
        "file_count": b.file_count,
        "schedule_id": b.schedule_id or None,
        "note": b.note,
        "download_url": f"/api/v1/backups/{b.backup_id}/download",
    }


def refusal_name(reason: int) -> str:
    name = str(bpb.ArchiveRefusalReason.Name(reason))
    return name.removeprefix("ARCHIVE_REFUSAL_REASON_").lower()


def task_error(e: bpb.TaskError) -> dict[str, Any]:
    """A failed task's error as a problem document (RFC 9457 members plus our own)."""
    if e.refusal:
        reason = refusal_name(e.refusal)
        return {"type": TYPE_BASE + "archive_refused", "title": "Archive refused",
                "status": 422, "detail": f"{reason}: {e.message}", "reason": reason,
                "entry": e.entry_name or None, "retryable": e.retryable}  # fmt: skip
    status = 503 if e.retryable else 500
    return {"type": TYPE_BASE + ("unavailable" if e.retryable else "internal"),
            "title": "Task failed", "status": status, "detail": e.message or "the task failed",
            "reason": None, "entry": None, "retryable": e.retryable}  # fmt: skip


def task_json(t: bpb.BackupTask, public_url: str) -> dict[str, Any]:
    restore = t.kind == bpb.TASK_KIND_RESTORE
    result: dict[str, Any] | None = None
    if t.state == bpb.TASK_STATE_SUCCEEDED:
        if restore:
            result = {"grain_id": t.grain_id, "url": f"{public_url}/grain/{t.grain_id}",
                      "backup_id": t.backup_id or None}  # fmt: skip
        else:
            result = {"backup_id": t.backup_id, "grain_id": t.grain_id}
    return {
        "id": TASK_PREFIX + t.task_id,
        "kind": "restore" if restore else "backup",
        "state": _STATE.get(t.state, "running"),
        "queued": t.state == bpb.TASK_STATE_QUEUED,
        "grain_id": t.grain_id or None,
        "bytes_done": t.bytes_done,
        "bytes_total": t.bytes_total,
        "created_at": t.created_at.seconds + t.created_at.nanos / 1e9,
        "result": result,
        "error": task_error(t.error) if t.state == bpb.TASK_STATE_FAILED else None,
    }


def schedule_json(s: bpb.Schedule) -> dict[str, Any]:
    r = s.retention
    return {
        "id": s.schedule_id,
        "grain_id": s.grain_id or None,
        "all_grains": s.WhichOneof("scope") == "all_grains_of_account_id",
        "frequency": FREQUENCY_NAME.get(s.frequency, "daily"),
        "retention": {
            "keep_last": r.keep_last,
            "keep_daily": r.keep_daily,
            "keep_weekly": r.keep_weekly,
        },
        "created_at": iso(s.created_at),
        "next_run_at": iso(s.next_run_at),
        "last_run_at": iso(s.last_run_at),
        "last_task_ids": [TASK_PREFIX + t for t in s.last_task_ids],
    }


def accepted(task: bpb.BackupTask, public_url: str) -> JSONResponse:
    doc = task_json(task, public_url)
    return JSONResponse(doc, status_code=202, headers={"Location": f"/api/v1/tasks/{doc['id']}"})


# -- the calls shared with the web UI -------------------------------------------------------


def is_backup_task(task_id: str) -> bool:
    return task_id.startswith(TASK_PREFIX)


async def get_task(backup: Any, task_id: str, account_id: str) -> bpb.BackupTask:
    inner = task_id.removeprefix(TASK_PREFIX)
    if not ID_RE.match(inner):
        raise GrainhouseError(Kind.NOT_FOUND, "no such task")
    return cast(
        bpb.BackupTask,
        await backup.GetTask(
            bpb.GetTaskRequest(task_id=inner, owner_account_id=account_id), timeout=10
        ),
    )


async def create_backup(
    backup: Any, grain_id: str, account_id: str, note: str = "", key: str = ""
) -> bpb.BackupTask:
    return cast(bpb.BackupTask, await backup.CreateBackup(
        bpb.CreateBackupRequest(grain_id=grain_id, owner_account_id=account_id,
                                acting_account_id=account_id, note=note, request_key=key),
        timeout=30,
    ))  # fmt: skip


async def restore_upload(
    backup: Any, request: Request, account_id: str, title: str, key: str = ""
) -> bpb.BackupTask:
    """Stream the request body into backup.RestoreBackup; returns the task (upload complete)."""
    raw = request.headers.get("content-length", "")
    if not raw.isdigit() or int(raw) <= 0:
        raise GrainhouseError(Kind.INVALID, "send the archive as the body, with its Content-Length")
    if len(title) > 200:
        raise GrainhouseError(Kind.INVALID, "title: at most 200 characters")
    size = int(raw)

    async def parts() -> AsyncIterator[bpb.RestoreBackupRequest]:
        yield bpb.RestoreBackupRequest(
            options=bpb.RestoreOptions(owner_account_id=account_id, acting_account_id=account_id,
                                       title=title, upload_size_bytes=size, request_key=key)
        )  # fmt: skip
        buf = b""
        async for piece in request.stream():
            buf += piece
            while len(buf) >= CHUNK:
                yield bpb.RestoreBackupRequest(chunk=buf[:CHUNK])
                buf = buf[CHUNK:]
        if buf:
            yield bpb.RestoreBackupRequest(chunk=buf)

    return cast(bpb.BackupTask, await backup.RestoreBackup(parts(), timeout=UPLOAD_TIMEOUT))


# -- routes ---------------------------------------------------------------------------------


def routes(deps: Deps) -> list[ApiRoute]:
    from grainhouse_frontend.api import ApiRoute

    async def owner_of(caller: Caller, grain_id: str) -> None:
        assert deps.auth is not None
        reply = await deps.auth.Authorize(
            auth_pb2.AuthorizeRequest(
                credential=auth_pb2.Credential(bearer_secret=caller.secret), grain_id=grain_id
            ),
            timeout=5,
        )
        if not reply.allowed:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        if not reply.is_owner:
            raise GrainhouseError(Kind.PERMISSION, "only the grain's owner may back it up")

    def key(request: Request) -> str:
        return request.headers.get("idempotency-key", "")[:200]

    async def create(request: Request, caller: Caller) -> Response:
        grain_id = request.path_params["grain_id"]
        body = await json_body(request)
        note = field(body, "note", str, "")
        if len(note) > 200:
            raise GrainhouseError(Kind.INVALID, "note: at most 200 characters")
        await owner_of(caller, grain_id)
        task = await create_backup(deps.backup, grain_id, caller.account_id, note, key(request))
        return accepted(task, deps.public_url)

    async def list_backups(request: Request, caller: Caller) -> Response:
        limit, cursor = page_params(request)
        grain_id = grain_filter(request)
        reply = await deps.backup.ListBackups(
            bpb.ListBackupsRequest(
                owner_account_id=caller.account_id, grain_id=grain_id,
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )  # fmt: skip
        return page_json([backup_json(b) for b in reply.backups], reply.page)

    async def get_backup(request: Request, caller: Caller) -> Response:
        head = await backup_info(deps.backup, request.path_params["backup_id"], caller.account_id)
        return JSONResponse(backup_json(head.backup), headers={"ETag": f'"{head.backup.sha256}"'})

    async def delete_backup(request: Request, caller: Caller) -> Response:
        backup_id = request.path_params["backup_id"]
        if not ID_RE.match(backup_id):
            raise GrainhouseError(Kind.NOT_FOUND, "no such backup")
        await deps.backup.DeleteBackup(
            bpb.DeleteBackupRequest(backup_id=backup_id, owner_account_id=caller.account_id,
                                    acting_account_id=caller.account_id),
            timeout=30,
        )  # fmt: skip
        return Response(status_code=204)

    async def download(request: Request, caller: Caller) -> Response:
        return await download_response(
            deps.backup, request, request.path_params["backup_id"], caller.account_id
        )

    async def restore(request: Request, caller: Caller) -> Response:
        caller.require_grain_creation()  # a restore makes a new grain: not for visitors
        title = request.query_params.get("title", "").strip()
        task = await restore_upload(deps.backup, request, caller.account_id, title, key(request))
        return accepted(task, deps.public_url)

    async def list_schedules(request: Request, caller: Caller) -> Response:
        limit, cursor = page_params(request)
        grain_id = grain_filter(request)
        reply = await deps.backup.ListSchedules(
            bpb.ListSchedulesRequest(
                owner_account_id=caller.account_id, grain_id=grain_id,
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )  # fmt: skip
        return page_json([schedule_json(s) for s in reply.schedules], reply.page)

    async def create_schedule(request: Request, caller: Caller) -> Response:
        body = await json_body(request)
        frequency = FREQUENCY.get(field(body, "frequency", str))
        if frequency is None:
            raise GrainhouseError(Kind.INVALID, "frequency: hourly, daily or weekly")
        raw = field(body, "retention", dict, {"keep_last": 7})
        counts = {}
        for name in ("keep_last", "keep_daily", "keep_weekly"):
            n = field(raw, name, int, 0)
            if not 0 <= n <= 10_000:
                raise GrainhouseError(Kind.INVALID, f"retention.{name}: 0 to 10000")
            counts[name] = n
        if not any(counts.values()):
            raise GrainhouseError(Kind.INVALID, "retention: must keep something")
        grain_id = field(body, "grain_id", str, "")
        all_grains = field(body, "all_grains", bool, False)
        if bool(grain_id) == all_grains:
            raise GrainhouseError(Kind.INVALID, "give exactly one of grain_id and all_grains")
        req = bpb.CreateScheduleRequest(
            owner_account_id=caller.account_id, acting_account_id=caller.account_id,
            frequency=frequency, retention=bpb.Retention(**counts),
        )  # fmt: skip
        if grain_id:
            if not ID_RE.match(grain_id):
                raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
            await owner_of(caller, grain_id)
            req.grain_id = grain_id
        else:
            req.all_grains_of_account_id = caller.account_id
        made = await deps.backup.CreateSchedule(req, timeout=10)
        doc = schedule_json(made)
        where = f"/api/v1/backup-schedules/{doc['id']}"
        return JSONResponse(doc, status_code=201, headers={"Location": where})

    async def delete_schedule(request: Request, caller: Caller) -> Response:
        sid = request.path_params["schedule_id"]
        if not ID_RE.match(sid):
            raise GrainhouseError(Kind.NOT_FOUND, "no such schedule")
        await deps.backup.DeleteSchedule(
            bpb.DeleteScheduleRequest(schedule_id=sid, owner_account_id=caller.account_id,
                                      acting_account_id=caller.account_id),
            timeout=10,
        )  # fmt: skip
        return Response(status_code=204)

    from grainhouse_frontend.rest_apps import TASK_SCHEMA

    page = {"401": "No or bad token", "400": "Bad paging"}
    one = {"401": "No or bad token", "404": "No such backup"}
    zip_schema = {"type": "string", "format": "binary"}
    bid = "/api/v1/backups/{backup_id}"
    return [
        ApiRoute("/api/v1/grains/{grain_id}/backups", "POST",
                 "Back the grain up now (owner only): a task", "write", create,
                 {"202": "Accepted; the backup is a task", "400": "Bad input",
                  "401": "No or bad token", "403": "Not the owner",
                  "404": "No such grain (or no access)", "409": "The grain is in the trash",
                  "429": "Too many backup tasks running"}, TASK_SCHEMA,
                 body={"type": "object", "properties": {
                     "note": {"type": "string", "maxLength": 200}}}, idempotent=True),
        ApiRoute("/api/v1/backups", "GET", "Your backups, newest first", "read", list_backups,
                 {"200": "A page of backups", **page},
                 page_schema(BACKUP_SCHEMA),
                 query=("limit", "cursor", "grain_id")),
        ApiRoute(bid, "GET", "One backup (ETag: the archive's SHA-256)", "read", get_backup,
                 {"200": "The backup", **one}, BACKUP_SCHEMA),
        ApiRoute(bid, "DELETE", "Delete a backup archive", "write", delete_backup,
                 {"204": "Deleted", **one}),
        ApiRoute(bid + "/download", "GET",
                 "The archive (application/zip), streamed; one Range per request (If-Range)",
                 "read", download,
                 {"200": "The whole archive", "206": "The requested range", **one,
                  "416": "The range is outside the archive"}, zip_schema,
                 media_type="application/zip"),
        ApiRoute("/api/v1/restores", "POST",
                 "Restore an uploaded archive (the body) into a new grain: a task", "write",
                 restore,
                 {"202": "Upload received; validation and import are a task",
                  "400": "Bad upload", "401": "No or bad token",
                  "413": "The archive is larger than allowed",
                  "429": "Too many backup tasks running"}, TASK_SCHEMA,
                 query=("title",), idempotent=True, raw_body=True,
                 upload_types=("application/zip", "application/octet-stream")),
        ApiRoute("/api/v1/backup-schedules", "GET", "Your backup schedules", "read",
                 list_schedules, {"200": "A page of schedules", **page},
                 page_schema(SCHEDULE_SCHEMA),
                 query=("limit", "cursor", "grain_id")),
        ApiRoute("/api/v1/backup-schedules", "POST",
                 "Make a recurring backup of one grain or of all your grains", "write",
                 create_schedule,
                 {"201": "The schedule", "400": "Bad input", "401": "No or bad token",
                  "403": "Not the grain's owner", "404": "No such grain"}, SCHEDULE_SCHEMA,
                 body={"type": "object", "required": ["frequency"], "properties": {
                     "grain_id": {"type": "string", "maxLength": 80},
                     "all_grains": {"type": "boolean"},
                     "frequency": {"enum": list(FREQUENCY)},
                     "retention": {"type": "object", "properties": {
                         "keep_last": {"type": "integer", "minimum": 0, "maximum": 10000},
                         "keep_daily": {"type": "integer", "minimum": 0, "maximum": 10000},
                         "keep_weekly": {"type": "integer", "minimum": 0, "maximum": 10000}}}}}),
        ApiRoute("/api/v1/backup-schedules/{schedule_id}", "DELETE",
                 "Delete a schedule (its backups stay)", "write", delete_schedule,
                 {"204": "Deleted", "401": "No or bad token", "404": "No such schedule"}),
    ]  # fmt: skip
