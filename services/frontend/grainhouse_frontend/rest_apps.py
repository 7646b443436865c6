"""REST resources for apps (installed packages) and the tasks of long operations.

Owns: /api/v1/apps, /api/v1/apps/{package_id}, /api/v1/tasks/{task_id}.
Trusts: grainmgr to validate every uploaded byte (the frontend only counts them).
Never: holds a whole package in memory: the upload streams to grainmgr in 1 MiB chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error
from grainhouse_frontend.identity import Caller
from grainhouse_frontend.rest_io import package_json, page_json, page_params, page_schema, task_json
from grainhouse_proto import common_pb2, grainmgr_pb2

if TYPE_CHECKING:
    from grainhouse_frontend.api import ApiRoute, Deps

MAX_PACKAGE_BYTES = 512 * 1024 * 1024
CHUNK = 1024 * 1024
_tasks_running: set[asyncio.Task[None]] = set()
TASK_SCHEMA = {
    "type": "object",
    "required": ["id", "kind", "state"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string"},
        "state": {"enum": ["running", "succeeded", "failed"]},
        "result": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "created_at": {"type": "number"},
    },
}
APP_SCHEMA = {"type": "object", "properties": {
    "package_id": {"type": "string"}, "app_id": {"type": "string"},
    "version": {"type": "integer"}, "title": {"type": "string"}}}  # fmt: skip


def routes(deps: Deps) -> list[ApiRoute]:
    from grainhouse_frontend.api import ApiRoute

    async def list_apps(request: Request, caller: Caller) -> Response:
        limit, cursor = page_params(request)
        reply = await deps.grainmgr.ListPackages(
            grainmgr_pb2.ListPackagesRequest(
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor)
            ),
            timeout=10,
        )
        return page_json([package_json(p) for p in reply.packages], reply.page)

    async def install(request: Request, caller: Caller) -> Response:
        if not caller.is_admin:
            raise GrainhouseError(Kind.PERMISSION, "only admins install apps")
        raw = request.headers.get("content-length", "")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_PACKAGE_BYTES:
            raise GrainhouseError(
                Kind.INVALID, "send the package as the body, with its Content-Length"
            )
        size = int(raw)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)

        async def parts() -> AsyncIterator[grainmgr_pb2.InstallPackageRequest]:
            yield grainmgr_pb2.InstallPackageRequest(
                metadata=grainmgr_pb2.InstallPackageMetadata(
                    size_bytes=size,
                    sha256=request.headers.get("x-content-sha256", ""),
                    acting_account_id=caller.account_id,
                )
            )
            while (chunk := await queue.get()) is not None:
                yield grainmgr_pb2.InstallPackageRequest(chunk=chunk)

        call = asyncio.ensure_future(deps.grainmgr.InstallPackage(parts(), timeout=600))
        task = await deps.tasks.start("install", caller.account_id)
        buf, received = b"", 0
        try:
            async for piece in request.stream():
                received += len(piece)
                if received > size:
                    raise GrainhouseError(Kind.INVALID, "the body is longer than Content-Length")
                buf += piece
                while len(buf) >= CHUNK:
                    await _put(queue, call, buf[:CHUNK])
                    buf = buf[CHUNK:]
            if buf:
                await _put(queue, call, buf)
            await _put(queue, call, None)
        except BaseException:
            call.cancel()
            raise
        if call.done():
            # grainmgr already answered (an early refusal): say so now, not as a task.
            reply = await call
            await deps.tasks.finish(task, _install_result(reply), None)
        else:
            finisher = asyncio.ensure_future(_finish(deps, task, call))
            _tasks_running.add(finisher)
            finisher.add_done_callback(_tasks_running.discard)
        done = await deps.tasks.get(task["id"], caller.account_id)
        return JSONResponse(
            task_json(done),
            status_code=202,
            headers={"Location": f"/api/v1/tasks/{task['id']}"},
        )

    async def uninstall(request: Request, caller: Caller) -> Response:
        if not caller.is_admin:
            raise GrainhouseError(Kind.PERMISSION, "only admins uninstall apps")
        reply = await deps.grainmgr.UninstallPackage(
            grainmgr_pb2.UninstallPackageRequest(
                package_id=request.path_params["package_id"],
                force=request.query_params.get("force") == "true",
                acting_account_id=caller.account_id,
            ),
            timeout=60,
        )
        return JSONResponse({"orphaned_grains": reply.orphaned_grains})

    async def get_task(request: Request, caller: Caller) -> Response:
        from grainhouse_frontend import rest_backups

        task_id = request.path_params["task_id"]
        if rest_backups.is_backup_task(task_id):  # backup's own tasks (bkt_…), read from backup
            found = await rest_backups.get_task(deps.backup, task_id, caller.account_id)
            return JSONResponse(rest_backups.task_json(found, deps.public_url))
        task = await deps.tasks.get(task_id, caller.account_id)
        return JSONResponse(task_json(task))

    return [
        ApiRoute("/api/v1/apps", "GET", "Installed apps (current versions)", "read", list_apps,
                 {"200": "A page of apps", "400": "Bad paging", "401": "No or bad token"},
                 page_schema(APP_SCHEMA),
                 query=("limit", "cursor")),
        ApiRoute("/api/v1/apps", "POST", "Install an app: the package file is the body",
                 "admin", install,
                 {"202": "Upload received; the install is a task", "400": "Bad upload",
                  "401": "No or bad token", "403": "Not admin"},
                 TASK_SCHEMA, idempotent=True, raw_body=True),
        ApiRoute("/api/v1/apps/{package_id}", "DELETE", "Uninstall a package", "admin",
                 uninstall,
                 {"200": "Uninstalled", "401": "No or bad token", "403": "Not admin",
                  "404": "No such package", "409": "Grains use it (use force=true)"},
                 {"type": "object", "properties": {"orphaned_grains": {"type": "integer"}}},
                 query=("force",)),
        ApiRoute("/api/v1/tasks/{task_id}", "GET", "A long operation's state and result",
                 "read", get_task,
                 {"200": "The task", "401": "No or bad token", "404": "No such task"},
                 TASK_SCHEMA),
    ]  # fmt: skip


async def _put(queue: asyncio.Queue[bytes | None], call: Any, item: bytes | None) -> None:
    # If grainmgr refused early, stop feeding it (and do not block on a full queue).
    while True:
        if call.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.put(item), 1.0)
            return


def _install_result(reply: grainmgr_pb2.InstallPackageResponse) -> dict[str, Any]:
    return {
        "app_id": reply.app_id,
        "package_id": reply.package_id,
        "version": reply.version,
        "title": reply.title,
        "upgraded": reply.upgraded,
        "already_installed": reply.already_installed,
    }


async def _finish(deps: Deps, task: dict[str, Any], call: Any) -> None:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        err = from_rpc_error(exc)
        await deps.tasks.finish(task, None, {"status": err.http_status,
                                             "detail": err.public_message})  # fmt: skip
        return
    await deps.tasks.finish(task, _install_result(reply), None)
