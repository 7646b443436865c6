"""REST resources for the caller's API tokens, and for admins: users and invitations.

Owns: /api/v1/tokens…, /api/v1/admin/users…, /api/v1/admin/invitations….
Trusts: auth for every rule about tokens (scopes, expiry, who may see whom).
Never: shows a token secret except in the answer that creates it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import Caller
from grainhouse_frontend.problem import problem
from grainhouse_frontend.rest_io import (
    SCOPE_VALUE,
    created,
    etag_of,
    field,
    if_match_ok,
    iso,
    json_body,
    page_json,
    page_params,
    page_schema,
    token_json,
)
from grainhouse_proto import auth_pb2, common_pb2

if TYPE_CHECKING:
    from grainhouse_frontend.api import ApiRoute, Deps

TOKEN_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "name": {"type": "string"},
    "scopes": {"type": "array", "items": {"type": "string"}},
    "expires_at": {"type": ["string", "null"]}}}  # fmt: skip
USER_SCHEMA = {"type": "object", "required": ["id", "disabled"], "properties": {
    "id": {"type": "string"}, "email": {"type": "string"}, "display_name": {"type": "string"},
    "is_admin": {"type": "boolean"}, "totp_enabled": {"type": "boolean"},
    "disabled": {"type": "boolean"}, "visitor": {"type": "boolean"},
    "created_at": {"type": ["string", "null"]},
    "last_login_at": {"type": ["string", "null"]}}}  # fmt: skip
INVITATION_SCHEMA = {"type": "object", "required": ["id", "state"], "properties": {
    "id": {"type": "string"}, "email": {"type": "string"}, "admin": {"type": "boolean"},
    "created_by": {"type": "string"}, "created_at": {"type": ["string", "null"]},
    "expires_at": {"type": ["string", "null"]}, "used_at": {"type": ["string", "null"]},
    "state": {"enum": ["open", "used", "expired"]}}}  # fmt: skip


def user_json(a: auth_pb2.Account) -> dict[str, Any]:
    return {"id": a.account_id, "email": a.email, "display_name": a.display_name,
            "is_admin": a.is_admin, "totp_enabled": a.totp_enabled, "disabled": a.disabled,
            "visitor": a.is_visitor, "created_at": iso(a.created_at),
            "last_login_at": iso(a.last_login_at)}  # fmt: skip


def user_etag(doc: dict[str, Any]) -> str:
    # A login moves last_login_at; that is no edit of the resource an admin changes.
    return etag_of({k: v for k, v in doc.items() if k != "last_login_at"})


def invitation_json(i: auth_pb2.Invitation, now: float) -> dict[str, Any]:
    if i.HasField("used_at"):
        state = "used"
    elif i.expires_at.seconds <= now:
        state = "expired"
    else:
        state = "open"
    return {"id": i.invitation_id, "email": i.email, "admin": i.grants_admin,
            "created_by": i.created_by, "created_at": iso(i.created_at),
            "expires_at": iso(i.expires_at),
            "used_at": iso(i.used_at) if i.HasField("used_at") else None,
            "state": state}  # fmt: skip


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
        return page_json([token_json(t) for t in reply.tokens], reply.page)

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
        items = [user_json(a) for a in reply.accounts]
        return page_json(items, reply.page)

    async def find_user(caller: Caller, account_id: str) -> auth_pb2.Account:
        assert deps.auth is not None
        reply = await deps.auth.ListAccounts(
            auth_pb2.ListAccountsRequest(caller=cred(caller), account_id=account_id), timeout=10
        )
        if not reply.accounts:
            raise GrainhouseError(Kind.NOT_FOUND, "no such account")
        return cast(auth_pb2.Account, reply.accounts[0])

    async def get_user(request: Request, caller: Caller) -> Response:
        doc = user_json(await find_user(caller, request.path_params["account_id"]))
        return JSONResponse(doc, headers={"ETag": user_etag(doc)})

    async def patch_user(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        account_id = request.path_params["account_id"]
        body = await json_body(request)
        current = user_json(await find_user(caller, account_id))
        if not if_match_ok(request, user_etag(current)):
            return problem(412, "the account changed since you read it (If-Match)")
        if not {"disabled", "visitor"} & body.keys():
            return JSONResponse(current, headers={"ETag": user_etag(current)})
        account = None
        changes = (
            ("visitor", deps.auth.SetAccountVisitor, auth_pb2.SetAccountVisitorRequest),
            ("disabled", deps.auth.SetAccountDisabled, auth_pb2.SetAccountDisabledRequest),
        )
        for name, call, message in changes:
            if name in body:
                change = {name: field(body, name, bool)}
                request_pb = message(caller=cred(caller), account_id=account_id, **change)
                account = (await call(request_pb, timeout=10)).account
        assert account is not None
        doc = user_json(account)
        return JSONResponse(doc, headers={"ETag": user_etag(doc)})

    async def invitations(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        limit, cursor = page_params(request)
        reply = await deps.auth.ListInvitations(
            auth_pb2.ListInvitationsRequest(
                caller=cred(caller), include_closed=request.query_params.get("all") == "true",
                page=common_pb2.PageRequest(page_size=limit, page_token=cursor),
            ),
            timeout=10,
        )  # fmt: skip
        now = time.time()
        return page_json([invitation_json(i, now) for i in reply.invitations], reply.page)

    async def revoke_invitation(request: Request, caller: Caller) -> Response:
        assert deps.auth is not None
        await deps.auth.RevokeInvitation(
            auth_pb2.RevokeInvitationRequest(
                caller=cred(caller), invitation_id=request.path_params["invitation_id"]
            ),
            timeout=10,
        )
        return Response(status_code=204)

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
                 page_schema(TOKEN_SCHEMA),
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
                 page_schema(USER_SCHEMA),
                 query=("limit", "cursor", "q")),
        ApiRoute("/api/v1/admin/users/{account_id}", "GET", "One account (admin, with ETag)",
                 "admin", get_user,
                 {"200": "The account", "403": "Not admin", "404": "No such account", **tok},
                 USER_SCHEMA),
        ApiRoute("/api/v1/admin/users/{account_id}", "PATCH",
                 "Disable or enable an account, or make it a visitor / promote it to a full "
                 "user (admin, If-Match); disabling revokes its sessions and API tokens at "
                 "once", "admin", patch_user,
                 {"200": "The account as it is now", "400": "Bad input", "403": "Not admin",
                  "404": "No such account",
                  "409": "Your own account, the operator, the last enabled admin, or an "
                         "admin made a visitor",
                  "412": "If-Match failed", **tok}, USER_SCHEMA,
                 body={"type": "object", "properties": {"disabled": {"type": "boolean"},
                                                        "visitor": {"type": "boolean"}}}),
        ApiRoute("/api/v1/admin/invitations", "GET",
                 "Invitations (admin): open ones, or all=true for used and expired too",
                 "admin", invitations,
                 {"200": "A page of invitations", "400": "Bad paging", "403": "Not admin", **tok},
                 page_schema(INVITATION_SCHEMA),
                 query=("limit", "cursor", "all")),
        ApiRoute("/api/v1/admin/invitations/{invitation_id}", "DELETE",
                 "Revoke an invitation (admin; idempotent)", "admin", revoke_invitation,
                 {"204": "Revoked", "403": "Not admin", "404": "No such invitation", **tok}),
        ApiRoute("/api/v1/admin/invitations", "POST", "Invite someone (admin)", "admin", invite,
                 {"201": "The invitation link (shown once)", "400": "Bad input",
                  "403": "Not admin", **tok},
                 {"type": "object", "properties": {"url": {"type": "string"}}},
                 body={"type": "object", "properties": {
                     "email": {"type": "string", "maxLength": 200}, "admin": {"type": "boolean"},
                     "send_email": {"type": "boolean"}}}, idempotent=True),
    ]  # fmt: skip
