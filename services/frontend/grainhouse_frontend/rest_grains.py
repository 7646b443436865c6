"""REST resources for grains, their sharing and their API tokens.

Owns: /api/v1/grains…, /api/v1/grants/{grant_id}.
Trusts: auth.Authorize for who may see or change a grain; grainmgr for the grain itself.
Never: tells a caller without access whether a grain exists (404 for both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import Caller, client_address
from grainhouse_frontend.problem import problem
from grainhouse_frontend.rest_io import (
    created,
    etag_of,
    field,
    grain_json,
    grant_json,
    if_match_ok,
    json_body,
    page_json,
    page_params,
    page_schema,
)
from grainhouse_proto import auth_pb2, common_pb2, grainmgr_pb2

if TYPE_CHECKING:
    from grainhouse_frontend.api import ApiRoute, Deps

GRAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "app_id", "title", "state", "url"],
    "properties": {
        "id": {"type": "string"}, "app_id": {"type": "string"}, "title": {"type": "string"},
        "state": {"type": "string"}, "url": {"type": "string"},
        "size_bytes": {"type": "integer"}, "is_owner": {"type": "boolean"},
        "role": {"type": "string"}, "owner_display_name": {"type": "string"},
        "awake_reasons": {"type": "array", "items": {"type": "string"}},
    },
}  # fmt: skip
GRANT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "role": {"type": "string"},
        "grantee_kind": {"type": "string"},
    },
}


def routes(deps: Deps) -> list[ApiRoute]:
    from grainhouse_frontend.api import ApiRoute

    def cred(caller: Caller) -> auth_pb2.Credential:
        return auth_pb2.Credential(bearer_secret=caller.secret)

    def view(g: grainmgr_pb2.Grain, is_owner: bool) -> dict[str, Any]:
        doc = grain_json(g)
        doc["url"] = f"{deps.public_url}/grain/{g.grain_id}"
        doc["is_owner"] = is_owner
        if is_owner:  # the app's own words on why it stays awake: for its owner only
            doc["awake_reasons"] = list(g.awake_reasons)
        return doc

    async def authorize(caller: Caller, grain_id: str, owner: bool = False) -> Any:
        assert deps.auth is not None
        reply = await deps.auth.Authorize(
            auth_pb2.AuthorizeRequest(credential=cred(caller), grain_id=grain_id), timeout=5
        )
        if not reply.allowed or (owner and not reply.is_owner):
            if reply.allowed:
                raise GrainhouseError(Kind.PERMISSION, "only the grain's owner may do this")
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        return reply

    async def fetch(grain_id: str) -> grainmgr_pb2.Grain:
        return cast(
            grainmgr_pb2.Grain,
            await deps.grainmgr.GetGrain(
                grainmgr_pb2.GetGrainRequest(grain_id=grain_id), timeout=10
            ),
        )

    async def list_shared(request: Request, caller: Caller, trashed: str) -> Response:
        """Grains shared with the caller: auth knows which (and the role), grainmgr the rest."""
        assert deps.auth is not None
        limit, cursor = page_params(request)
        reply = await deps.auth.ListSharedGrains(
            auth_pb2.ListSharedGrainsRequest(
                caller=cred(caller),
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )
        q = request.query_params.get("q", "").lower()
        items = []
        for s in reply.grains:
            try:
                g = await fetch(s.grain_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    continue  # deleted between auth's answer and ours
                raise
            is_trashed = g.state == grainmgr_pb2.GRAIN_STATE_TRASHED
            if (trashed == "exclude" and is_trashed) or (trashed == "only" and not is_trashed):
                continue
            if q not in (g.title + g.app_title).lower():
                continue
            doc = view(g, False)
            doc["role"] = s.role
            doc["owner_display_name"] = s.owner_display_name
            items.append(doc)
        return page_json(items, reply.page)

    async def list_grains(request: Request, caller: Caller) -> Response:
        limit, cursor = page_params(request)
        trashed = request.query_params.get("trashed", "exclude")
        if trashed not in ("exclude", "include", "only"):
            raise GrainhouseError(Kind.INVALID, "trashed: exclude, include or only")
        scope = request.query_params.get("scope", "owned")
        if scope not in ("owned", "shared"):
            raise GrainhouseError(Kind.INVALID, "scope: owned or shared")
        if scope == "shared":
            return await list_shared(request, caller, trashed)
        reply = await deps.grainmgr.ListGrains(
            grainmgr_pb2.ListGrainsRequest(
                owner_account_id=caller.account_id,
                include_trashed=trashed == "include",
                only_trashed=trashed == "only",
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )
        q = request.query_params.get("q", "").lower()
        items = [view(g, True) for g in reply.grains if q in (g.title + g.app_title).lower()]
        return page_json(items, reply.page)

    async def create_grain(request: Request, caller: Caller) -> Response:
        body = await json_body(request)
        caller.require_grain_creation()  # auth's decision: visitors create no grains (403)
        req = grainmgr_pb2.CreateGrainRequest(
            app_id=field(body, "app_id", str),
            title=field(body, "title", str, "")[:200],
            owner_account_id=caller.account_id,
        )
        action = body.get("action", 0)
        if isinstance(action, str):
            req.action_name = action
        elif isinstance(action, int) and not isinstance(action, bool) and 0 <= action < 2**31:
            req.action_index = action
        else:
            raise GrainhouseError(Kind.INVALID, "action: an index or a name")
        if not req.app_id or len(req.app_id) > 200:
            raise GrainhouseError(Kind.INVALID, "app_id: required")
        g = await deps.grainmgr.CreateGrain(req, timeout=60)
        doc = view(g, True)
        return created(doc, f"/api/v1/grains/{g.grain_id}")

    async def get_grain(request: Request, caller: Caller) -> Response:
        decision = await authorize(caller, request.path_params["grain_id"])
        doc = view(await fetch(request.path_params["grain_id"]), decision.is_owner)
        return JSONResponse(doc, headers={"ETag": etag_of(doc)})

    async def patch_grain(request: Request, caller: Caller) -> Response:
        grain_id = request.path_params["grain_id"]
        await authorize(caller, grain_id, owner=True)
        body = await json_body(request)
        current = view(await fetch(grain_id), True)
        if not if_match_ok(request, etag_of(current)):
            return problem(412, "the grain changed since you read it (If-Match)")
        req = grainmgr_pb2.UpdateGrainRequest(
            grain_id=grain_id, acting_account_id=caller.account_id
        )
        if "title" in body:
            title = field(body, "title", str)
            if not title.strip() or len(title) > 200:
                raise GrainhouseError(Kind.INVALID, "title: 1 to 200 characters")
            req.title = title
        doc = view(await deps.grainmgr.UpdateGrain(req, timeout=10), True)
        return JSONResponse(doc, headers={"ETag": etag_of(doc)})

    def lifecycle(method_name: str, req_type: Any) -> Any:
        async def handler(request: Request, caller: Caller) -> Response:
            grain_id = request.path_params["grain_id"]
            await authorize(caller, grain_id, owner=True)
            method = getattr(deps.grainmgr, method_name)
            g = await method(
                req_type(grain_id=grain_id, acting_account_id=caller.account_id), timeout=60
            )
            return JSONResponse(view(g, True))

        return handler

    async def delete_grain(request: Request, caller: Caller) -> Response:
        grain_id = request.path_params["grain_id"]
        await authorize(caller, grain_id, owner=True)
        await deps.grainmgr.DeleteGrain(
            grainmgr_pb2.DeleteGrainRequest(
                grain_id=grain_id,
                skip_trash=request.query_params.get("force") == "true",
                acting_account_id=caller.account_id,
            ),
            timeout=60,
        )
        return Response(status_code=204)

    async def logs(request: Request, caller: Caller) -> Response:
        grain_id = request.path_params["grain_id"]
        await authorize(caller, grain_id, owner=True)
        data = b""
        async for chunk in deps.grainmgr.StreamLogs(
            grainmgr_pb2.StreamLogsRequest(grain_id=grain_id, backlog_bytes=256 * 1024),
            timeout=10,
        ):
            data += chunk.data
        return PlainTextResponse(data.decode("utf-8", "replace"))

    async def open_session(request: Request, caller: Caller) -> Response:
        grain_id = request.path_params["grain_id"]
        await authorize(caller, grain_id)
        assert deps.origins is not None and deps.auth is not None
        # The origin is auth's record (shared by every frontend): see origins.py.
        scheme = deps.public_url.split("://", 1)[0]
        url = await deps.origins.open(
            deps.auth, cred(caller), grain_id, client_address(request), scheme
        )
        return created({"url": url, "grain_id": grain_id}, f"/api/v1/grains/{grain_id}")

    async def share(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        body = await json_body(request)
        ttl = field(body, "ttl_seconds", int, 0)
        if not 0 <= ttl < 2**32:
            raise GrainhouseError(Kind.INVALID, "ttl_seconds: out of range")
        reply = await deps.auth.CreateShareLink(
            auth_pb2.CreateShareLinkRequest(
                caller=cred(caller),
                grain_id=request.path_params["grain_id"],
                role=field(body, "role", str),
                label=field(body, "label", str, "")[:100],
                base_url=deps.public_url,
                ttl_seconds=ttl,
            ),
            timeout=10,
        )
        return created({"url": reply.url, "grant": grant_json(reply.grant)},
                       f"/api/v1/grants/{reply.grant.grant_id}")  # fmt: skip

    async def access(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        reply = await deps.auth.ListAccess(
            auth_pb2.ListAccessRequest(
                caller=cred(caller), grain_id=request.path_params["grain_id"]
            ),
            timeout=10,
        )
        return JSONResponse(
            {"owner_account_id": reply.owner_account_id,
             "items": [grant_json(g) for g in reply.grants], "next_cursor": None}
        )  # fmt: skip

    async def grant_to_account(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        body = await json_body(request)
        reply = await deps.auth.GrantAccess(
            auth_pb2.GrantAccessRequest(
                caller=cred(caller), grain_id=request.path_params["grain_id"],
                account_id=field(body, "account_id", str), role=field(body, "role", str),
                label=field(body, "label", str, "")[:100],
            ),
            timeout=10,
        )  # fmt: skip
        return created(grant_json(reply.grant), f"/api/v1/grants/{reply.grant.grant_id}")

    async def revoke(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        reply = await deps.auth.RevokeGrant(
            auth_pb2.RevokeGrantRequest(
                caller=cred(caller), grant_id=request.path_params["grant_id"]
            ),
            timeout=10,
        )
        return JSONResponse({"revoked_grant_ids": list(reply.revoked_grant_ids)})

    async def grain_token(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None and deps.origins is not None
        body = await json_body(request)
        ttl = field(body, "ttl_seconds", int, 0)
        if not 0 <= ttl < 2**32:
            raise GrainhouseError(Kind.INVALID, "ttl_seconds: out of range")
        reply = await deps.auth.CreateGrainApiToken(
            auth_pb2.CreateGrainApiTokenRequest(
                caller=cred(caller), grain_id=request.path_params["grain_id"],
                role=field(body, "role", str),
                label=field(body, "label", str, "api")[:100] or "api",
                ttl_seconds=ttl,
            ),
            timeout=10,
        )  # fmt: skip
        api_url = reply.api_url or deps.origins.api_url(deps.public_url.split("://", 1)[0])
        return created(
            {"token": reply.token_secret, "api_url": api_url, "grant": grant_json(reply.grant)},
            f"/api/v1/grants/{reply.grant.grant_id}",
        )

    gid = "/api/v1/grains/{grain_id}"
    std = {"401": "No or bad token", "404": "No such grain (or no access)"}
    lst = page_schema(GRAIN_SCHEMA)
    share_body = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "maxLength": 100},
            "label": {"type": "string", "maxLength": 100},
            "ttl_seconds": {"type": "integer", "minimum": 0, "maximum": 31536000},
        },
    }
    return [
        ApiRoute("/api/v1/grains", "GET",
                 "Your grains (scope=owned, the default), or the grains shared with you "
                 "(scope=shared: each with your role and its owner's name)", "read", list_grains,
                 {"200": "A page of grains", "400": "Bad paging", "401": "No or bad token"}, lst,
                 query=("limit", "cursor", "q", "trashed", "scope")),
        ApiRoute("/api/v1/grains", "POST", "Create a grain from an app action", "write",
                 create_grain, {"201": "Created", "400": "Bad input", "401": "No or bad token",
                                "403": "A visitor: may not create grains",
                                "404": "No such app"}, GRAIN_SCHEMA,
                 body={"type": "object", "required": ["app_id"], "properties": {
                     "app_id": {"type": "string", "maxLength": 200},
                     "title": {"type": "string", "maxLength": 200},
                     "action": {"type": ["integer", "string"]}}}, idempotent=True),
        ApiRoute(gid, "GET", "One grain (with ETag)", "read", get_grain,
                 {"200": "The grain", **std},
                 GRAIN_SCHEMA),
        ApiRoute(gid, "PATCH", "Change a grain's title (If-Match)", "write", patch_grain,
                 {"200": "Changed", "400": "Bad input", "403": "Not the owner",
                  "412": "If-Match failed", **std}, GRAIN_SCHEMA,
                 body={"type": "object", "properties": {"title": {"type": "string",
                     "minLength": 1, "maxLength": 200}}}),
        ApiRoute(gid, "DELETE", "Delete a trashed grain for good (force=true: any grain)",
                 "write", delete_grain, {"204": "Deleted", "403": "Not the owner",
                                         "409": "Not in the trash", **std}, query=("force",)),
        ApiRoute(gid + "/trash", "POST", "Move to the trash", "write",
                 lifecycle("TrashGrain", grainmgr_pb2.TrashGrainRequest),
                 {"200": "Trashed", "403": "Not the owner", **std}, GRAIN_SCHEMA),
        ApiRoute(gid + "/restore", "POST", "Take out of the trash", "write",
                 lifecycle("RestoreGrain", grainmgr_pb2.RestoreGrainRequest),
                 {"200": "Restored", "403": "Not the owner", **std}, GRAIN_SCHEMA),
        ApiRoute(gid + "/stop", "POST", "Stop the grain's sandbox", "write",
                 lifecycle("StopGrain", grainmgr_pb2.StopGrainRequest),
                 {"200": "Stopped", "403": "Not the owner", **std}, GRAIN_SCHEMA),
        ApiRoute(gid + "/restart", "POST", "Restart the grain", "write",
                 lifecycle("RestartGrain", grainmgr_pb2.RestartGrainRequest),
                 {"200": "Restarted", "403": "Not the owner", **std}, GRAIN_SCHEMA),
        ApiRoute(gid + "/logs", "GET", "The tail of the grain's log (text)", "read", logs,
                 {"200": "Log text", "403": "Not the owner", **std}, {"type": "string"}),
        ApiRoute(gid + "/sessions", "POST", "Open a session: a URL on the grain's own origin",
                 "read", open_session, {"201": "The session URL", **std},
                 {"type": "object", "properties": {"url": {"type": "string"}}}),
        ApiRoute(gid + "/shares", "POST", "Make a share link with a role", "write", share,
                 {"201": "The link (shown once)", "400": "Bad role", "403": "Role too high", **std},
                 {"type": "object", "properties": {"url": {"type": "string"},
                                                   "grant": GRANT_SCHEMA}},
                 body=share_body, idempotent=True),
        ApiRoute(gid + "/access", "GET", "Who has access (grants you may see)", "read", access,
                 {"200": "The grants", **std},
                 {"type": "object", "properties": {"items": {"type": "array",
                                                             "items": GRANT_SCHEMA}}}),
        ApiRoute(gid + "/grants", "POST", "Share with an account", "write", grant_to_account,
                 {"201": "The grant", "400": "Bad input", **std}, GRANT_SCHEMA,
                 body={"type": "object", "required": ["account_id", "role"], "properties": {
                     "account_id": {"type": "string"}, "role": {"type": "string"},
                     "label": {"type": "string", "maxLength": 100}}}, idempotent=True),
        ApiRoute(gid + "/api-tokens", "POST", "Make a grain API token (for DAV/git clients)",
                 "write", grain_token,
                 {"201": "The token (shown once) and the API URL", "400": "Bad role", **std},
                 {"type": "object", "properties": {"token": {"type": "string"},
                                                   "api_url": {"type": "string"}}},
                 body=share_body, idempotent=True),
        ApiRoute("/api/v1/grants/{grant_id}", "DELETE", "Revoke a grant and all made through it",
                 "write", revoke, {"200": "Revoked", "401": "No or bad token",
                                   "403": "Neither owner nor granter", "404": "No such grant"},
                 {"type": "object", "properties": {"revoked_grant_ids": {
                     "type": "array", "items": {"type": "string"}}}}),
    ]  # fmt: skip


_ = grpc  # the stubs raise grpc.aio.AioRpcError; problem.py maps them
