"""Auth RPCs for personal API tokens: create, list, revoke, authenticate.

Owns: decoding these requests and encoding their results.
Trusts: tokens.py and principals.py for every decision; ratelimit.py for guesses.
Never: returns a token secret except in CreateApiToken's response.
"""

from __future__ import annotations

from grainhouse_auth import (
    convert,
    metrics,
    principals,
    ratelimit,
    tokens,
)
from grainhouse_auth.principals import Principal
from grainhouse_auth.service_base import Ctx, ServicerBase
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2


class TokenRpcs(ServicerBase):
    async def CreateApiToken(
        self, request: auth_pb2.CreateApiTokenRequest, context: Ctx
    ) -> auth_pb2.CreateApiTokenResponse:
        p = await self._caller(request.caller)
        if p.account is None or p.kind not in ("session", "api_token"):
            raise GrainhouseError(Kind.PERMISSION, "only an account can make API tokens")
        try:
            scopes = tuple(convert.SCOPE_FROM_PB[s] for s in request.scopes)
        except KeyError:
            raise GrainhouseError(Kind.INVALID, "scopes: unknown scope") from None
        if not scopes:
            raise GrainhouseError(Kind.INVALID, "scopes: at least one")
        if "admin" in scopes and not p.account.is_admin:
            raise GrainhouseError(Kind.PERMISSION, "the admin scope needs an admin account")
        not_after = None
        if p.kind == "api_token":
            assert p.token is not None
            # Scopes are ordered (auth.proto): admin implies write implies read.
            top = max(tokens.SCOPES.index(s) for s in p.token.scopes)
            held = set(tokens.SCOPES[: top + 1])
            if not set(scopes) <= held or (not p.is_admin and "admin" in scopes):
                raise GrainhouseError(Kind.PERMISSION, "a token can only pass on scopes it holds")
            not_after = p.token.expires_at
        async with self.pool.connection() as conn:
            secret, token = await tokens.issue(
                conn,
                p.account_id,
                request.name,
                scopes,
                self._ttl(request.ttl_seconds),
                not_after,
            )
        await self.events.audit(
            "token_created",
            kind="api_token",
            token_id=token.token_id,
            account_id=p.account_id,
            scopes=list(token.scopes),
        )
        return auth_pb2.CreateApiTokenResponse(token_secret=secret, token=convert.api_token(token))

    async def ListApiTokens(
        self, request: auth_pb2.ListApiTokensRequest, context: Ctx
    ) -> auth_pb2.ListApiTokensResponse:
        p = await self._caller(request.caller)
        if p.account is None or not p.has_scope("read"):
            raise GrainhouseError(Kind.PERMISSION, "only an account can list its tokens")
        target = request.account_id or p.account_id
        if target != p.account_id and not p.is_admin:
            raise GrainhouseError(Kind.PERMISSION, "admin only")
        size = convert.page_size(request.page.page_size)
        async with self.pool.connection() as conn:
            found = await tokens.live_of(
                conn, target, convert.cursor_in(request.page.page_token), size + 1
            )
        items, token = convert.page_out(found, size, lambda x: (x.created_at, x.token_id))
        resp = auth_pb2.ListApiTokensResponse(tokens=[convert.api_token(x) for x in items])
        resp.page.next_page_token = token
        return resp

    async def RevokeApiToken(
        self, request: auth_pb2.RevokeApiTokenRequest, context: Ctx
    ) -> auth_pb2.RevokeApiTokenResponse:
        p = await self._caller(request.caller)
        if p.account is None or not p.has_scope("write"):
            raise GrainhouseError(Kind.PERMISSION, "needs a session or a token with write scope")
        async with self.pool.connection() as conn:
            owner = await tokens.owner_of(conn, request.token_id) if request.token_id else None
            if owner is None or (owner != p.account_id and not p.is_admin):
                raise GrainhouseError(Kind.NOT_FOUND, "token not found")
            changed = await tokens.revoke(conn, request.token_id)
        await self.events.revoked(credential_ids=[request.token_id])
        if changed:
            await self.events.audit(
                "token_revoked", kind="api_token", token_id=request.token_id, by=p.account_id
            )
        return auth_pb2.RevokeApiTokenResponse()

    async def AuthenticateToken(
        self, request: auth_pb2.AuthenticateTokenRequest, context: Ctx
    ) -> auth_pb2.AuthenticateTokenResponse:

        async def resolve() -> Principal:
            async with self.pool.connection() as conn:
                return await principals.from_bearer(conn, request.bearer_secret)

        p = await metrics.counted(
            "token",
            ratelimit.guarded(
                self.pool,
                request.client_address,
                self.limits,
                resolve,
                stale=lambda conn: principals.was_issued(conn, request.bearer_secret),
            ),
        )
        resp = auth_pb2.AuthenticateTokenResponse(
            principal=convert.principal(p), cache_ttl_seconds=self.settings.authorize_cache_seconds
        )
        if p.account is not None:
            resp.account.CopyFrom(convert.account(p.account))
        return resp
