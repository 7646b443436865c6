"""REST resources for the caller's API tokens, and for admins: users and invitations.

Owns: /api/v1/tokens…, /api/v1/admin/users, /api/v1/admin/invitations.
Trusts: auth for every rule about tokens (scopes, expiry, who may see whom).
Never: shows a token secret except in the answer that creates it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import Caller
from grainhouse_frontend.rest_io import (
    SCOPE_VALUE,
    created,
    field,
    iso,
    json_body,
    page_params,
    token_json,
)
from grainhouse_proto import auth_pb2, common_pb2

if TYPE_CHECKING:
    from grainhouse_frontend.api import ApiRoute, Deps

TOKEN_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "name": {"type": "string"},
    "scopes": {"type": "array", "items": {"type": "string"}},
    "expires_at": {"type": ["string", "null"]}}}  # fmt: skip


def routes(deps: Deps) -> list[ApiRoute]:
    from grainhouse_frontend.api import ApiRoute

    def cred(caller: Caller) -> auth_pb2.Credential:
        return auth_pb2.Credential(bearer_secret=caller.secret)

    async def list_tokens(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        limit, cursor = page_params(request)
        reply = await deps.auth.ListApiTokens(
            auth_pb2.ListApiTokensRequest(
                caller=cred(caller), page=common_pb2.PageRequest(page_size=limit, page_token=cursor)
            ),
            timeout=10,
        )
        return JSONResponse({"items": [token_json(t) for t in reply.tokens],
                             "next_cursor": reply.page.next_page_token or None})  # fmt: skip

    async def create_token(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        body = await json_body(request)
        scopes = field(body, "scopes", list, ["read"])
        if not scopes or not all(isinstance(s, str) and s in SCOPE_VALUE for s in scopes):
            raise GrainhouseError(Kind.INVALID, "scopes: a list of read, write, admin")
        ttl = field(body, "ttl_seconds", int, 0)
        if not 0 <= ttl < 2**32:
            raise GrainhouseError(Kind.INVALID, "ttl_seconds: out of range")
        reply = await deps.auth.CreateApiToken(
            auth_pb2.CreateApiTokenRequest(
                caller=cred(caller), name=field(body, "name", str),
                scopes=[SCOPE_VALUE[s] for s in scopes], ttl_seconds=ttl,
            ),
            timeout=10,
        )  # fmt: skip
        doc = {**token_json(reply.token), "token": reply.token_secret}
        return created(doc, f"/api/v1/tokens/{reply.token.token_id}")

    async def revoke_token(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        await deps.auth.RevokeApiToken(
            auth_pb2.RevokeApiTokenRequest(
                caller=cred(caller), token_id=request.path_params["token_id"]
            ),
            timeout=10,
        )
        return Response(status_code=204)

    async def users(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        limit, cursor = page_params(request)
        reply = await deps.auth.ListAccounts(
            auth_pb2.ListAccountsRequest(
                caller=cred(caller), query=request.query_params.get("q", "")[:200],
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )  # fmt: skip
        items = [
            {"id": a.account_id, "email": a.email, "display_name": a.display_name,
             "is_admin": a.is_admin, "totp_enabled": a.totp_enabled, "disabled": a.disabled,
             "created_at": iso(a.created_at), "last_login_at": iso(a.last_login_at)}
            for a in reply.accounts
        ]  # fmt: skip
        return JSONResponse({"items": items, "next_cursor": reply.page.next_page_token or None})

    async def invite(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        body = await json_body(request)
        reply = await deps.auth.CreateInvitation(
            auth_pb2.CreateInvitationRequest(
                caller=cred(caller), email=field(body, "email", str, ""),
                grants_admin=field(body, "admin", bool, False), base_url=deps.public_url,
                send_email=field(body, "send_email", bool, False),
            ),
            timeout=15,
        )  # fmt: skip
        return created({"id": reply.invitation.invitation_id, "url": reply.url,
                        "expires_at": iso(reply.invitation.expires_at)},
                       "/api/v1/admin/users")  # fmt: skip

    tok = {"401": "No or bad token"}
    return [
        ApiRoute("/api/v1/tokens", "GET", "Your personal API tokens", "read", list_tokens,
                 {"200": "A page of tokens", "400": "Bad paging", **tok},
                 {"type": "object", "properties": {
                     "items": {"type": "array", "items": TOKEN_SCHEMA},
                                                   "next_cursor": {"type": ["string", "null"]}}},
                 query=("limit", "cursor")),
        ApiRoute("/api/v1/tokens", "POST", "Make a personal API token (secret shown once)",
                 "read", create_token,
                 {"201": "The token with its secret", "400": "Bad input",
                  "403": "Scope or expiry above the caller's", **tok},
                 {**TOKEN_SCHEMA, "required": ["token"]},
                 body={"type": "object", "required": ["name"], "properties": {
                     "name": {"type": "string", "minLength": 1, "maxLength": 100},
                     "scopes": {"type": "array", "items": {"enum": ["read", "write", "admin"]}},
                     "ttl_seconds": {"type": "integer", "minimum": 0, "maximum": 31536000}}},
                 idempotent=True),
        ApiRoute("/api/v1/tokens/{token_id}", "DELETE", "Revoke a token", "read", revoke_token,
                 {"204": "Revoked", "404": "No such token", **tok}),
        ApiRoute("/api/v1/admin/users", "GET", "Accounts (admin)", "admin", users,
                 {"200": "A page of accounts", "400": "Bad paging", "403": "Not admin", **tok},
                 query=("limit", "cursor", "q")),
        ApiRoute("/api/v1/admin/invitations", "POST", "Invite someone (admin)", "admin", invite,
                 {"201": "The invitation link (shown once)", "400": "Bad input",
                  "403": "Not admin", **tok},
                 {"type": "object", "properties": {"url": {"type": "string"}}},
                 body={"type": "object", "properties": {
                     "email": {"type": "string", "maxLength": 200}, "admin": {"type": "boolean"},
                     "send_email": {"type": "boolean"}}}, idempotent=True),
    ]  # fmt: skip
