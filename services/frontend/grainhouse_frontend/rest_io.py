"""Shapes of the REST API: JSON bodies in, resources out, cursors, ETags, Idempotency-Key replay.

Owns: the JSON form of grains, apps, tokens, grants and tasks; the cursor and ETag formats; the
Idempotency-Key rule.
Trusts: nothing in a request body until it is checked here (sizes, types).
Never: puts a secret in a resource except the one-time answer that creates it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.kvstore import Store, safe_key
from grainhouse_proto import auth_pb2, common_pb2, grainmgr_pb2

MAX_JSON_BYTES = 64 * 1024
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
STATE = {
    v: grainmgr_pb2.GrainState.Name(v).removeprefix("GRAIN_STATE_").lower()
    for v in grainmgr_pb2.GrainState.values()
}
SCOPE_NAME = {
    auth_pb2.SCOPE_READ: "read",
    auth_pb2.SCOPE_WRITE: "write",
    auth_pb2.SCOPE_ADMIN: "admin",
}
SCOPE_VALUE = {v: k for k, v in SCOPE_NAME.items()}


def iso(ts: Any) -> str | None:
    if ts is None or not ts.seconds:
        return None
    return str(ts.ToDatetime(dt.UTC).isoformat().replace("+00:00", "Z"))


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise GrainhouseError(Kind.INVALID, "the JSON body is too large")
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise GrainhouseError(Kind.INVALID, "the body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise GrainhouseError(Kind.INVALID, "the body must be a JSON object")
    return value


def field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None and default is None:
        raise GrainhouseError(Kind.INVALID, f"{name}: required")
    if kind is int and isinstance(value, bool):
        raise GrainhouseError(Kind.INVALID, f"{name}: must be an integer")
    if not isinstance(value, kind):
        raise GrainhouseError(Kind.INVALID, f"{name}: must be {kind.__name__}")
    return value


def page_params(request: Request) -> tuple[int, str]:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise GrainhouseError(Kind.INVALID, f"limit: an integer from 1 to {MAX_LIMIT}")
    cursor = request.query_params.get("cursor", "")
    if len(cursor) > 200:
        raise GrainhouseError(Kind.INVALID, "cursor: not valid")
    return int(raw), cursor


def page_json(items: list[Any], page: common_pb2.PageResponse) -> JSONResponse:
    """One page of a listing: `items` and the opaque cursor of the next page (null = last)."""
    return JSONResponse({"items": items, "next_cursor": page.next_page_token or None})


def page_schema(item: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of `page_json`'s body for items of schema `item`."""
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def grain_json(g: grainmgr_pb2.Grain) -> dict[str, Any]:
    return {
        "id": g.grain_id,
        "app_id": g.app_id,
        "app_title": g.app_title,
        "package_id": g.package_id,
        "title": g.title,
        "state": STATE.get(g.state, "stopped"),
        "size_bytes": g.size_bytes,
        "owner_account_id": g.owner_account_id,
        "created_at": iso(g.created_at),
        "last_used_at": iso(g.last_used_at),
        "trashed_at": iso(g.trashed_at),
        "trash_expires_at": iso(g.trash_expires_at),
    }


def etag_of(doc: dict[str, Any]) -> str:
    volatile = ("state", "last_used_at", "size_bytes", "awake_reasons")
    stable = {k: v for k, v in doc.items() if k not in volatile}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:32]
    return f'"{digest}"'


def if_match_ok(request: Request, current: str) -> bool:
    """True without If-Match (optional, RFC 9110 §13.1.1) or when it names the current tag."""
    sent = request.headers.get("if-match")
    if sent is None:
        return True
    tags = {t.strip().removeprefix("W/") for t in sent.split(",")}
    return "*" in tags or current in tags


def package_json(p: grainmgr_pb2.Package) -> dict[str, Any]:
    return {
        "package_id": p.package_id,
        "app_id": p.app_id,
        "version": p.version,
        "marketing_version": p.marketing_version,
        "title": p.title,
        "description": p.description,
        "actions": [{"index": a.index, "name": a.name, "title": a.title} for a in p.actions],
        "grain_count": p.grain_count,
        "size_bytes": p.size_bytes,
        "installed_at": iso(p.installed_at),
    }


def token_json(t: auth_pb2.ApiToken) -> dict[str, Any]:
    return {
        "id": t.token_id,
        "name": t.name,
        "scopes": [SCOPE_NAME.get(s, "none") for s in t.scopes],
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "last_used_at": iso(t.last_used_at),
        "secret_hint": t.secret_hint,
    }


def grant_json(g: auth_pb2.Grant) -> dict[str, Any]:
    which = g.WhichOneof("grantee") or ""
    return {
        "id": g.grant_id,
        "grain_id": g.grain_id,
        "grantee_kind": {"account_id": "account", "share_link_id": "link",
                         "grain_api_token_id": "grain_api_token"}.get(which, "unknown"),
        "account_id": g.account_id or None,
        "grantee_display_name": g.grantee_display_name or None,
        "role": g.role,
        "label": g.label,
        "parent_grant_id": g.parent_grant_id or None,
        "created_at": iso(g.created_at),
    }  # fmt: skip


# -- tasks ----------------------------------------------------------------------------------


class Tasks:
    """Long operations (install, backup, restore) as resources at /api/v1/tasks/{id}."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def start(self, kind: str, owner: str) -> dict[str, Any]:
        task = {
            "id": "task_" + secrets.token_hex(12),
            "kind": kind,
            "state": "running",
            "owner": owner,
            "created_at": time.time(),
            "result": None,
            "error": None,
        }
        await self.store.put(f"task.{task['id']}", task)
        return task

    async def finish(
        self, task: dict[str, Any], result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        task = {**task, "state": "failed" if error else "succeeded", "result": result,
                "error": error}  # fmt: skip
        await self.store.put("task." + task["id"], task)

    async def get(self, task_id: str, owner: str) -> dict[str, Any]:
        if not task_id.startswith("task_") or len(task_id) > 64:
            raise GrainhouseError(Kind.NOT_FOUND, "no such task")
        task = await self.store.get("task." + task_id)
        if task is None or task.get("owner") != owner:
            raise GrainhouseError(Kind.NOT_FOUND, "no such task")
        return task


def task_json(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k != "owner"}


# -- Idempotency-Key ------------------------------------------------------------------------


async def idempotent(
    store: Store,
    request: Request,
    owner: str,
    run: Callable[[], Awaitable[Response]],
    fingerprint: str,
) -> Response:
    """Run `run()` once per (owner, route, Idempotency-Key); replay its answer afterwards.

    A key reused with another body → 422; while the first is still running → 409.
    Server errors are not remembered, so a retry after a 5xx runs again.
    """
    key_text = request.headers.get("idempotency-key", "")
    if not key_text:
        return await run()
    if len(key_text) > 200:
        raise GrainhouseError(Kind.INVALID, "Idempotency-Key: at most 200 characters")
    key = "idem." + safe_key(owner, request.method, request.url.path, key_text)
    seen = await store.get(key)
    if seen is not None and seen.get("state") != "released":
        if seen.get("fingerprint") != fingerprint:
            return _problem_response(422, "this Idempotency-Key was used with another request")
        if seen.get("state") == "pending":
            return _problem_response(409, "the first request with this key is still running")
        return Response(
            seen["body"].encode(),
            status_code=seen["status"],
            media_type=seen["media_type"],
            headers={**seen.get("headers", {}), "Idempotent-Replayed": "true"},
        )
    pending = {"state": "pending", "fingerprint": fingerprint}
    if seen is None:
        if not await store.create(key, pending):
            return _problem_response(409, "the first request with this key is still running")
    else:
        await store.put(key, pending)
    try:
        response = await run()
    except BaseException:
        await store.put(key, {"state": "released"})
        raise
    if response.status_code >= 500 or not hasattr(response, "body"):
        await store.put(key, {"state": "released"})
        return response
    keep = {k: v for k, v in response.headers.items() if k.lower() in ("location", "etag")}
    await store.put(
        key,
        {"state": "done", "fingerprint": fingerprint, "status": response.status_code,
         "media_type": response.media_type or "application/json",
         "body": bytes(response.body).decode(), "headers": keep},
    )  # fmt: skip
    return response


def _problem_response(status: int, detail: str) -> Response:
    from grainhouse_frontend.problem import problem

    return problem(status, detail)


def body_fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def created(doc: dict[str, Any], location: str, status: int = 201) -> JSONResponse:
    return JSONResponse(doc, status_code=status, headers={"Location": location})
