"""Auth RPCs for grains and sharing: registration, share links, grants, grain API tokens, Authorize.

Owns: decoding these requests and encoding their results.
Trusts: sharing.py and permissions.py for every decision.
Never: returns a share-link or token secret except in the response that creates it.
"""

from __future__ import annotations

from grainhouse_auth import (
    accounts,
    admin_accounts,
    convert,
    principals,
    ratelimit,
)
from grainhouse_auth.principals import Principal
from grainhouse_auth.service_base import ANONYMOUS, Ctx, ServicerBase
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2, common_pb2


class SharingRpcs(ServicerBase):
    async def RegisterGrain(
        self, request: auth_pb2.RegisterGrainRequest, context: Ctx
    ) -> auth_pb2.RegisterGrainResponse:
        await self.sharing.register(
            request.grain_id,
            request.owner_account_id,
            request.app_id,
            request.title,
            request.view_info.SerializeToString(),
        )
        return auth_pb2.RegisterGrainResponse()

    async def ForgetGrain(
        self, request: auth_pb2.ForgetGrainRequest, context: Ctx
    ) -> auth_pb2.ForgetGrainResponse:
        await self.sharing.forget(request.grain_id)
        return auth_pb2.ForgetGrainResponse()

    async def CreateShareLink(
        self, request: auth_pb2.CreateShareLinkRequest, context: Ctx
    ) -> auth_pb2.CreateShareLinkResponse:
        p = await self._caller(request.caller)
        secret, view = await self.sharing.share_link(
            p, request.grain_id, request.role, request.label, request.ttl_seconds
        )
        return auth_pb2.CreateShareLinkResponse(
            url=f"{self._base(request.base_url)}/shared/{secret}",
            share_link_secret=secret,
            grant=convert.grant(view),
        )

    async def RedeemShareLink(
        self, request: auth_pb2.RedeemShareLinkRequest, context: Ctx
    ) -> auth_pb2.RedeemShareLinkResponse:
        p = await self._guarded_caller(request.caller, request.client_address)
        # An unknown or revoked link (NOT_FOUND) is a guess at a share-link secret.
        grain_id, view = await ratelimit.guarded(
            self.pool,
            request.client_address,
            self.limits,
            lambda: self.sharing.redeem_link(p, request.share_link_secret),
            counts=(Kind.NOT_FOUND,),
            stale=lambda conn: principals.was_issued(conn, request.share_link_secret),
        )
        resp = auth_pb2.RedeemShareLinkResponse(grain_id=grain_id)
        if view is not None:
            resp.grant.CopyFrom(convert.grant(view))
        return resp

    async def GrantAccess(
        self, request: auth_pb2.GrantAccessRequest, context: Ctx
    ) -> auth_pb2.GrantAccessResponse:
        p = await self._caller(request.caller)
        view = await self.sharing.grant_account(
            p, request.grain_id, request.account_id, request.role, request.label
        )
        return auth_pb2.GrantAccessResponse(grant=convert.grant(view))

    async def ListAccess(
        self, request: auth_pb2.ListAccessRequest, context: Ctx
    ) -> auth_pb2.ListAccessResponse:
        p = await self._caller(request.caller)
        owner, views = await self.sharing.list_access(p, request.grain_id)
        return auth_pb2.ListAccessResponse(
            owner_account_id=owner, grants=[convert.grant(v) for v in views]
        )

    async def ListSharedGrains(
        self, request: auth_pb2.ListSharedGrainsRequest, context: Ctx
    ) -> auth_pb2.ListSharedGrainsResponse:
        p = await self._caller(request.caller)
        if p.account is None or not p.has_scope("read"):
            raise GrainhouseError(Kind.PERMISSION, "only an account has grains shared with it")
        size = convert.page_size(request.page.page_size)
        async with self.pool.connection() as conn:
            found = await admin_accounts.shared_with(
                conn, p.account_id, convert.cursor_in(request.page.page_token), size + 1
            )
        items, token = convert.page_out(found, size, lambda x: (x.cursor_at, x.grain_id))
        resp = auth_pb2.ListSharedGrainsResponse(
            grains=[admin_accounts.shared_pb(x) for x in items]
        )
        resp.page.next_page_token = token
        return resp

    async def RevokeGrant(
        self, request: auth_pb2.RevokeGrantRequest, context: Ctx
    ) -> auth_pb2.RevokeGrantResponse:
        p = await self._caller(request.caller)
        gone = await self.sharing.revoke(p, request.grant_id)
        return auth_pb2.RevokeGrantResponse(revoked_grant_ids=gone)

    async def ChangeGrantRole(
        self, request: auth_pb2.ChangeGrantRoleRequest, context: Ctx
    ) -> auth_pb2.ChangeGrantRoleResponse:
        p = await self._caller(request.caller)
        view = await self.sharing.change_role(p, request.grant_id, request.role)
        return auth_pb2.ChangeGrantRoleResponse(grant=convert.grant(view))

    async def CreateGrainApiToken(
        self, request: auth_pb2.CreateGrainApiTokenRequest, context: Ctx
    ) -> auth_pb2.CreateGrainApiTokenResponse:
        p = await self._caller(request.caller)
        secret, view = await self.sharing.grain_token(
            p, request.grain_id, request.role, request.label, request.ttl_seconds
        )
        return auth_pb2.CreateGrainApiTokenResponse(token_secret=secret, grant=convert.grant(view))

    # -- the decision --

    async def Authorize(
        self, request: auth_pb2.AuthorizeRequest, context: Ctx
    ) -> auth_pb2.AuthorizeResponse:
        which = request.credential.WhichOneof("secret")
        if which is None or not request.grain_id:
            raise GrainhouseError(Kind.INVALID, "credential and grain_id are required")
        ttl = self.settings.authorize_cache_seconds
        try:
            p = await self._guarded_caller(request.credential, request.client_address)
        except principals.AccountDisabledError:
            return auth_pb2.AuthorizeResponse(
                deny_reason=auth_pb2.DENY_REASON_ACCOUNT_DISABLED, cache_ttl_seconds=ttl
            )
        except GrainhouseError as exc:
            if exc.kind is not Kind.UNAUTHENTICATED:
                raise
            return auth_pb2.AuthorizeResponse(
                deny_reason=auth_pb2.DENY_REASON_UNAUTHENTICATED, cache_ttl_seconds=ttl
            )
        return await self._decision(p, request.grain_id)

    async def _decision(self, p: Principal, grain_id: str) -> auth_pb2.AuthorizeResponse:
        """Authorize's answer for a resolved principal (also ResolveOrigin's, rpc_origins.py)."""
        ttl = self.settings.authorize_cache_seconds
        decision = await self.sharing.decide(p, grain_id)
        resp = auth_pb2.AuthorizeResponse(principal=convert.principal(p), cache_ttl_seconds=ttl)
        if not decision.allowed or decision.access is None:
            resp.deny_reason = convert.DENY_TO_PB[decision.deny_reason]
            return resp
        access = decision.access
        resp.allowed = True
        resp.permissions.extend(decision.permissions)
        resp.role = access.role
        resp.is_owner = access.is_owner
        resp.grant_chain.extend(access.grant_chain)
        resp.identity.CopyFrom(await self._identity(p, access.via))
        return resp

    async def _identity(self, p: Principal, via: str | None) -> common_pb2.AppIdentity:
        who = p.account
        if who is None and p.kind == "grain_token" and via:
            # A grain API token speaks for the account that made it (its client acts for them).
            async with self.pool.connection() as conn:
                row = await (
                    await conn.execute("SELECT granted_by FROM grants WHERE grant_id = %s", (via,))
                ).fetchone()
                who = await accounts.get(conn, row[0]) if row else None
        if who is None:
            return common_pb2.AppIdentity(display_name=ANONYMOUS, is_anonymous=True)
        return common_pb2.AppIdentity(
            user_id=who.app_user_id,
            display_name=who.display_name,
            preferred_handle=who.preferred_handle,
        )
