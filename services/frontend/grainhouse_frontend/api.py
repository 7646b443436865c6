"""The REST API at /api/v1: routes, their scopes, and the OpenAPI 3.1 document built from them.

Owns: the /api/v1 route table (each route declares its scope and documents itself).
Trusts: `Identity` for who calls; auth and grainmgr for decisions and data.
Never: reads credential data or grain files; answers errors other than problem+json.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import Caller, Identity
from grainhouse_frontend.problem import MEDIA_TYPE
from grainhouse_proto import grainmgr_pb2, grainmgr_pb2_grpc

SCOPE_RANK = {"none": 0, "read": 1, "write": 2, "admin": 3}
Handler = Callable[[Request, Caller], Awaitable[Response]]


@dataclass(frozen=True)
class ApiRoute:
    path: str
    method: str
    summary: str
    scope: str | None  # None: no token needed
    handler: Callable[..., Awaitable[Response]]
    responses: dict[str, str] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass
class Deps:
    identity: Identity
    grainmgr: grainmgr_pb2_grpc.GrainManagerStub
    peers: dict[str, str]


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


def build_routes(deps: Deps) -> tuple[list[Route], list[ApiRoute]]:
    async def me(request: Request, caller: Caller) -> Response:
        return JSONResponse(caller.public())

    async def list_apps(request: Request, caller: Caller) -> Response:
        reply = await deps.grainmgr.ListPackages(grainmgr_pb2.ListPackagesRequest(), timeout=10)
        items = [
            {
                "package_id": p.package_id,
                "app_id": p.app_id,
                "version": p.version,
                "title": getattr(p, "title", ""),
            }
            for p in reply.packages
        ]
        return JSONResponse({"items": items, "next_cursor": None})

    async def system_status(request: Request, caller: Caller) -> Response:
        services = {name: await rpc.check_health(addr, 2) for name, addr in deps.peers.items()}
        return JSONResponse({"services": services, "healthy": all(services.values())})

    api = [
        ApiRoute(
            "/api/v1/me", "GET", "Who the token belongs to and what it may do", "read", me,
            {"200": "The caller", "401": "No or bad token"},
            {"type": "object", "properties": {
                "account_id": {"type": "string"}, "credential_id": {"type": "string"},
                "scope": {"enum": ["read", "write", "admin"]}, "is_admin": {"type": "boolean"}}},
        ),
        ApiRoute(
            "/api/v1/apps", "GET", "Installed apps (current versions)", "read", list_apps,
            {"200": "A page of apps", "401": "No or bad token"},
            {"type": "object", "properties": {
                "items": {"type": "array", "items": {"type": "object"}},
                "next_cursor": {"type": ["string", "null"]}}},
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

    def guard(route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = await deps.identity.caller(request)
            if route.scope and SCOPE_RANK.get(caller.scope, 0) < SCOPE_RANK[route.scope]:
                raise GrainhouseError(
                    Kind.PERMISSION, f"this needs a token with the {route.scope} scope"
                )
            return await route.handler(request, caller)

        return endpoint

    spec = openapi(api)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route(r.path, guard(r), methods=[r.method]) for r in api]
    routes.append(Route("/api/v1/openapi.json", openapi_json, methods=["GET"]))
    return routes, api


def openapi(api: list[ApiRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the same table that routes requests."""
    paths: dict[str, Any] = {}
    for r in api:
        responses: dict[str, Any] = {}
        for code, text in r.responses.items():
            if code.startswith("2"):
                content = {"application/json": {"schema": r.schema or {"type": "object"}}}
            else:
                content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            responses[code] = {"description": text, "content": content}
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.method.lower() + r.path.replace("/api/v1", "").replace("/", "_"),
            "responses": responses,
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
