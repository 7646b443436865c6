"""Web UI for backups: a grain's backups (make one, download, delete), all your backups, a
restore by upload into a new grain, and your backup schedules (list, create, delete).

Owns: the pages /grain/{grain_id}/backup and /backups, the browser's download link
/backups/{backup_id}/download (same Range rules as the REST API), the restore upload and the
schedule forms /backups/schedules and /backups/schedules/{schedule_id}/delete.
Trusts: grainmgr for who owns a grain; backup for its records, filtered by the signed-in owner.
Never: accepts a form or an upload without its CSRF token; holds an archive whole; shows a
backup, task or schedule of another account (backup answers NOT_FOUND for them).
"""

from __future__ import annotations

import secrets
from typing import Any, cast

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error
from grainhouse_frontend import backup_downloads, rest_backups
from grainhouse_frontend.page_base import UiBase, human_size, safe_next, when
from grainhouse_frontend.web_session import WebUser
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import common_pb2, grainmgr_pb2

REFRESH_SECONDS = "2"  # while a task runs, the page reloads itself (no script needed)
MAX_KEEP = 1000  # the form's bound on "keep N" (the REST API allows up to 10000)
SCHEDULE_NOTICES = {
    "schedule-made": "The schedule is set. Its first backup runs when it is due.",
    "schedule-deleted": "The schedule was deleted. The backups it made stay.",
}


def schedule_view(s: bpb.Schedule, titles: dict[str, str]) -> dict[str, Any]:
    r = s.retention
    keep = [f"last {r.keep_last}"] if r.keep_last else []
    keep += [f"{r.keep_daily} daily"] if r.keep_daily else []
    keep += [f"{r.keep_weekly} weekly"] if r.keep_weekly else []
    return {
        "schedule_id": s.schedule_id,
        "what": titles.get(s.grain_id, "a grain") if s.grain_id else "All your grains",
        "frequency": rest_backups.FREQUENCY_NAME.get(s.frequency, "daily"),
        "keep": ", ".join(keep),
        "next": when(s.next_run_at),
        "last": when(s.last_run_at),
    }


def backup_view(b: bpb.BackupInfo) -> dict[str, Any]:
    return {
        "backup_id": b.backup_id,
        "grain_id": b.grain_id,
        "grain_title": b.grain_title,
        "app_title": b.app_title,
        "created": when(b.created_at),
        "size": human_size(b.size_bytes),
        "files": b.file_count,
        "scheduled": bool(b.schedule_id),
        "note": b.note,
    }


class BackupPages(UiBase):
    async def _owned(self, user: WebUser, grain_id: str) -> grainmgr_pb2.Grain:
        grain = cast(
            grainmgr_pb2.Grain,
            await self.d.grainmgr.GetGrain(
                grainmgr_pb2.GetGrainRequest(grain_id=grain_id), timeout=10
            ),
        )
        if grain.owner_account_id != user.account_id:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        return grain

    async def _task(self, request: Request, user: WebUser) -> dict[str, Any] | None:
        task_id = request.query_params.get("task", "")
        if not rest_backups.is_backup_task(task_id):
            return None
        try:
            task = await rest_backups.get_task(self.d.backup, task_id, user.account_id)
        except (grpc.aio.AioRpcError, GrainhouseError):
            return None
        return rest_backups.task_json(task, self.d.public_url)

    async def _list(self, user: WebUser, grain_id: str = "") -> list[dict[str, Any]]:
        reply = await self.d.backup.ListBackups(
            bpb.ListBackupsRequest(owner_account_id=user.account_id, grain_id=grain_id,
                                   page=common_pb2.PageRequest(page_size=200)),
            timeout=10,
        )  # fmt: skip
        return [backup_view(b) for b in reply.backups]

    def _page(self, request: Request, user: WebUser, **ctx: Any) -> Response:
        task = ctx.get("task")
        section = "grains" if ctx.get("grain") is not None else "backups"
        response = self.render(request, "backups.html", user, section=section, **ctx)
        if task is not None and task["state"] == "running":
            response.headers["Refresh"] = REFRESH_SECONDS
        return response

    async def grain_backup(self, request: Request) -> Response:
        """GET: the grain's backups; POST (form): make one now."""
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        grain_id = request.path_params["grain_id"]
        try:
            if request.method == "POST":
                await self.post_form(request, user)
                await self._owned(user, grain_id)
                created = await rest_backups.create_backup(
                    self.d.backup, grain_id, user.account_id, key=secrets.token_hex(8)
                )
                return RedirectResponse(
                    f"/grain/{grain_id}/backup?task={rest_backups.TASK_PREFIX}{created.task_id}",
                    status_code=303,
                )
            grain = await self._owned(user, grain_id)
            task = await self._task(request, user)
            backups = await self._list(user, grain_id)
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        return self._page(request, user, grain=grain, backups=backups, task=task,
                          title=f"Backups of {grain.title}")  # fmt: skip

    async def _schedules(self, user: WebUser) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """The caller's schedules, and their grains (for the form's choice and the titles)."""
        grains = await self.d.grainmgr.ListGrains(
            grainmgr_pb2.ListGrainsRequest(owner_account_id=user.account_id,
                                           page=common_pb2.PageRequest(page_size=500)),
            timeout=10,
        )  # fmt: skip
        titles = {g.grain_id: g.title for g in grains.grains}
        reply = await self.d.backup.ListSchedules(
            bpb.ListSchedulesRequest(owner_account_id=user.account_id,
                                     page=common_pb2.PageRequest(page_size=200)),
            timeout=10,
        )  # fmt: skip
        choices = [{"grain_id": g.grain_id, "title": g.title} for g in grains.grains]
        return [schedule_view(s, titles) for s in reply.schedules], choices

    async def backups(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        try:
            task = await self._task(request, user)
            backups = await self._list(user)
            schedules, choices = await self._schedules(user)
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        notice = SCHEDULE_NOTICES.get(request.query_params.get("done", ""), "")
        extra = {"notice": notice} if notice else {}
        return self._page(request, user, grain=None, backups=backups, task=task, title="Backups",
                          schedules=schedules, schedule_grains=choices, **extra)  # fmt: skip

    async def schedule_create(self, request: Request) -> Response:
        """POST /backups/schedules (form): what (a grain id or "all"), frequency, keep N."""
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        frequency = rest_backups.FREQUENCY.get(form.get("frequency", ""))
        what = form.get("what", "").strip()
        try:
            keep = int(form.get("keep", ""))
        except ValueError:
            keep = 0
        try:
            if frequency is None or not what:
                raise GrainhouseError(Kind.INVALID, "Choose what to back up and how often.")
            if not 1 <= keep <= MAX_KEEP:
                raise GrainhouseError(Kind.INVALID, f"Keep between 1 and {MAX_KEEP} backups.")
            req = bpb.CreateScheduleRequest(
                owner_account_id=user.account_id, acting_account_id=user.account_id,
                frequency=frequency, retention=bpb.Retention(keep_last=keep),
            )  # fmt: skip
            if what == "all":
                req.all_grains_of_account_id = user.account_id
            else:
                await self._owned(user, what)
                req.grain_id = what
            await self.d.backup.CreateSchedule(req, timeout=10)
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)
        return RedirectResponse("/backups?done=schedule-made", status_code=303)

    async def schedule_delete(self, request: Request) -> Response:
        schedule_id = request.path_params["schedule_id"]
        return await self.form_action(
            request,
            lambda user: self.d.backup.DeleteSchedule(
                bpb.DeleteScheduleRequest(
                    schedule_id=schedule_id,
                    owner_account_id=user.account_id,
                    acting_account_id=user.account_id,
                ),
                timeout=10,
            ),
            "/backups?done=schedule-deleted",
        )

    async def backup_download(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        try:
            return await backup_downloads.download_response(
                self.d.backup, request, request.path_params["backup_id"], user.account_id
            )
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            return self.fail(request, user, exc)

    async def backup_delete(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        try:
            await self.d.backup.DeleteBackup(
                bpb.DeleteBackupRequest(backup_id=request.path_params["backup_id"],
                                        owner_account_id=user.account_id,
                                        acting_account_id=user.account_id),
                timeout=30,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        return RedirectResponse(safe_next(form.get("back", "/backups")), status_code=303)

    async def backup_restore(self, request: Request) -> Response:
        """The restore upload (the file is the body; sent by static/backups.js)."""
        user = await self.d.sessions.user(request)
        if user is None:
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        self.d.sessions.check_csrf(request, user, request.headers.get("x-csrf-token", ""))
        if not user.can_create_grains:  # a restore makes a new grain: not for visitors
            return JSONResponse({"detail": "visitors cannot create grains"}, status_code=403)
        title = request.query_params.get("title", "").strip()
        try:
            task = await rest_backups.restore_upload(
                self.d.backup, request, user.account_id, title, secrets.token_hex(8)
            )
        except (grpc.aio.AioRpcError, GrainhouseError) as exc:
            err = from_rpc_error(exc) if isinstance(exc, grpc.aio.AioRpcError) else exc
            return JSONResponse({"detail": err.public_message}, status_code=err.http_status)
        task_id = rest_backups.TASK_PREFIX + task.task_id
        return JSONResponse({"task": task_id, "next": f"/backups?task={task_id}"}, status_code=202)
