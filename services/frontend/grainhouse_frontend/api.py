"""The REST API at /api/v1: routes, their scopes, and the OpenAPI 3.1 document built from them.

Owns: the /api/v1 route table (each route declares its scope and documents itself), the
scope check and the Idempotency-Key wrapping of creations.
Trusts: `Identity` for who calls; auth and grainmgr for decisions and data.
Never: reads credential data or grain files; answers errors other than problem+json.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import Caller, Identity
from grainhouse_frontend.kvstore import Store, SwitchableStore
from grainhouse_frontend.origins import Origins
from grainhouse_frontend.problem import MEDIA_TYPE
from grainhouse_frontend.rest_io import Tasks, body_fingerprint, idempotent
from grainhouse_proto import auth_pb2_grpc, grainmgr_pb2_grpc

SCOPE_RANK = {"none": 0, "read": 1, "write": 2, "admin": 3}
Handler = Callable[[Request, Caller], Awaitable[Response]]
OBJ: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ApiRoute:
    path: str
    method: str
    summary: str
    scope: str | None  # None: no token needed
    handler: Callable[..., Awaitable[Response]]
    responses: dict[str, str] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # JSON request body schema
    query: tuple[str, ...] = ()
    idempotent: bool = False  # honours Idempotency-Key
    raw_body: bool = False  # application/octet-stream upload
    media_type: str = "application/json"  # of 2xx answers
    upload_types: tuple[str, ...] = ("application/octet-stream",)  # raw_body media types


@dataclass
class Deps:
    identity: Identity
    grainmgr: grainmgr_pb2_grpc.GrainManagerStub
    peers: dict[str, str]
    auth: auth_pb2_grpc.AuthStub | None = None
    origins: Origins | None = None
    public_url: str = "http://localhost:6080"
    store: Store = field(default_factory=SwitchableStore)
    backup: Any = None  # backup_pb2_grpc.BackupStub

    @property
    def tasks(self) -> Tasks:
        return Tasks(self.store)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "request_id": {"type": "string"},
        },
    }


def _base_routes(deps: Deps) -> list[ApiRoute]:
    async def me(request: Request, caller: Caller) -> Response:
        return JSONResponse(caller.public())

    async def system_status(request: Request, caller: Caller) -> Response:
        services = {name: await rpc.check_health(addr, 2) for name, addr in deps.peers.items()}
        return JSONResponse({"services": services, "healthy": all(services.values())})

    return [
        ApiRoute(
            "/api/v1/me", "GET", "Who the token belongs to and what it may do", "read", me,
            {"200": "The caller", "401": "No or bad token"},
            {"type": "object", "properties": {
                "account_id": {"type": "string"}, "credential_id": {"type": "string"},
                "scope": {"enum": ["read", "write", "admin"]}, "is_admin": {"type": "boolean"},
                "can_create_grains": {"type": "boolean"}}},
        ),
        ApiRoute(
            "/api/v1/admin/status", "GET", "Health of every platform service", "admin",
            system_status,
            {"200": "Health per service", "401": "No or bad token", "403": "Not admin"},
            {"type": "object", "properties": {
                "services": {"type": "object", "additionalProperties": {"type": "boolean"}},
                "healthy": {"type": "boolean"}}},
        ),
    ]  # fmt: skip


def build_routes(deps: Deps) -> tuple[list[Route], list[ApiRoute]]:
    from grainhouse_frontend import rest_account, rest_apps, rest_backups, rest_grains

    api = (
        _base_routes(deps)
        + rest_apps.routes(deps)
        + rest_grains.routes(deps)
        + rest_account.routes(deps)
        + rest_backups.routes(deps)
    )

    def guard(route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = await deps.identity.caller(request)
            if route.scope and SCOPE_RANK.get(caller.scope, 0) < SCOPE_RANK[route.scope]:
                raise GrainhouseError(
                    Kind.PERMISSION, f"this needs a token with the {route.scope} scope"
                )
            if not route.idempotent or "idempotency-key" not in request.headers:
                return await route.handler(request, caller)
            if route.raw_body:
                fingerprint = "len:" + request.headers.get("content-length", "")
            else:
                fingerprint = body_fingerprint(await request.body())
            return await idempotent(
                deps.store,
                request,
                caller.account_id or caller.credential_id,
                lambda: route.handler(request, caller),
                fingerprint,
            )

        return endpoint

    spec = openapi(api)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for r in api:
        by_path.setdefault(r.path, {})[r.method] = guard(r)

    def dispatch(methods: dict[str, Callable[[Request], Awaitable[Response]]]) -> Any:
        async def endpoint(request: Request) -> Response:
            handler = methods.get(request.method)
            if handler is None:
                raise GrainhouseError(Kind.INVALID, "method not allowed here")
            return await handler(request)

        return endpoint

    routes = [Route(p, dispatch(m), methods=list(m)) for p, m in by_path.items()]
    routes.append(Route("/api/v1/openapi.json", openapi_json, methods=["GET"]))
    return routes, api


_PARAM = re.compile(r"{(\w+)}")
_QUERY = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
    "cursor": {"type": "string", "maxLength": 200},
    "q": {"type": "string", "maxLength": 200},
    "force": {"type": "boolean"},
    "trashed": {"enum": ["exclude", "include", "only"]},
    "scope": {"enum": ["owned", "shared"]},
    "all": {"type": "boolean"},
    "grain_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}$"},
    "title": {"type": "string", "maxLength": 200},
}


def openapi(api: list[ApiRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the same table that routes requests."""
    paths: dict[str, Any] = {}
    for r in api:
        responses: dict[str, Any] = {}
        for code, text in r.responses.items():
            if code.startswith("2") and code != "204":
                content = {r.media_type: {"schema": r.schema or OBJ}}
                responses[code] = {"description": text, "content": content}
            elif code == "204":
                responses[code] = {"description": text}
            else:
                content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
                responses[code] = {"description": text, "content": content}
        params: list[dict[str, Any]] = [
            {"name": n, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}$"}}
            for n in _PARAM.findall(r.path)
        ]  # fmt: skip
        params += [
            {"name": q, "in": "query", "required": False, "schema": _QUERY[q]} for q in r.query
        ]
        if r.idempotent:
            params.append(
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "maxLength": 200}}
            )  # fmt: skip
        if r.method == "PATCH":
            params.append({"name": "If-Match", "in": "header", "required": False,
                           "schema": {"type": "string"}})  # fmt: skip
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.method.lower()
            + _PARAM.sub(r"by_\1", r.path.replace("/api/v1", ""))
            .replace("/", "_")
            .replace("-", "_"),
            "responses": responses,
        }
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": r.body}},
            }
        if r.raw_body:
            binary = {"schema": {"type": "string", "format": "binary"}}
            op["requestBody"] = {
                "required": True,
                "content": {t: binary for t in r.upload_types},
            }
        if r.scope:
            op["security"] = [{"bearer": []}]
            op["x-grainhouse-scope"] = r.scope
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Grainhouse REST API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": _problem_schema()},
        },
    }
