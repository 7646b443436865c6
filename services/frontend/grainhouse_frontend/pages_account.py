"""Web UI: account settings (API tokens, two-factor, password) and the admin pages.

Owns: the account and admin pages.
Trusts: auth for tokens, TOTP and accounts; grainmgr for storage figures.
Never: shows a token secret or recovery codes except in the answer that made them.
"""

from __future__ import annotations

from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from grainhouse_common import rpc
from grainhouse_common.errors import from_rpc_error
from grainhouse_frontend.page_base import SCOPE_NAMES, SCOPES, UiBase, human_size, when
from grainhouse_frontend.web_session import WebUser
from grainhouse_proto import auth_pb2, common_pb2, grainmgr_pb2


class AccountPages(UiBase):
    # -- account ------------------------------------------------------------------------------

    async def account(self, request: Request, **extra: Any) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        return await self._account_page(request, user, **extra)

    async def _account_page(self, request: Request, user: WebUser, status: int = 200,
                            **extra: Any) -> Response:  # fmt: skip
        reply = await self.d.auth.ListApiTokens(
            auth_pb2.ListApiTokensRequest(caller=user.credential()), timeout=10
        )
        tokens = [
            {"token_id": t.token_id, "name": t.name, "hint": t.secret_hint,
             "scope": SCOPE_NAMES.get(max(t.scopes, default=auth_pb2.SCOPE_UNSPECIFIED), "?"),
             "expires": when(t.expires_at)}
            for t in reply.tokens
        ]  # fmt: skip
        return self.render(
            request,
            "account.html",
            user,
            status,
            tokens=tokens,
            section="account",
            title="Account",
            **extra,
        )

    async def account_op(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        op = request.path_params["op"]
        cred = user.credential()
        try:
            if op == "tokens":
                days = max(1, min(365, int(form.get("days", "30") or 30)))
                made = await self.d.auth.CreateApiToken(
                    auth_pb2.CreateApiTokenRequest(
                        caller=cred,
                        name=form.get("name", "")[:100],
                        scopes=[SCOPES.get(form.get("scope", "write"), auth_pb2.SCOPE_WRITE)],
                        ttl_seconds=days * 86400,
                    ),
                    timeout=10,
                )
                return await self._account_page(request, user, new_token=made.token_secret)
            if op == "password":
                await self.d.auth.ChangePassword(
                    auth_pb2.ChangePasswordRequest(
                        caller=cred,
                        old_password=form.get("old_password", ""),
                        new_password=form.get("new_password", ""),
                    ),
                    timeout=10,
                )
                return RedirectResponse("/account?done=password", status_code=303)
        except grpc.aio.AioRpcError as exc:
            return await self._account_page(
                request, user, 400, error=from_rpc_error(exc).public_message
            )
        except ValueError:
            return await self._account_page(request, user, 400, error="Days must be a number.")
        return self.message(request, user, "Not found", "No such action.", 404)

    async def totp(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        op = request.path_params["op"]
        cred = user.credential()
        try:
            if op == "enroll":
                got = await self.d.auth.EnrollTotp(
                    auth_pb2.EnrollTotpRequest(caller=cred), timeout=10
                )
                return await self._account_page(
                    request, user, totp_secret=got.totp_secret, totp_uri=got.otpauth_uri
                )
            if op == "confirm":
                done = await self.d.auth.ConfirmTotp(
                    auth_pb2.ConfirmTotpRequest(
                        caller=cred, totp_code=form.get("code", "").replace(" ", "")
                    ),
                    timeout=10,
                )
                fresh = await self.d.sessions.user(request)
                return await self._account_page(
                    request,
                    fresh or user,
                    recovery_codes=list(done.recovery_codes),
                    notice="Two-factor sign-in is on.",
                )
            if op == "disable":
                code = form.get("code", "").replace(" ", "")
                req = auth_pb2.DisableTotpRequest(caller=cred)
                if code.isdigit() and len(code) == 6:
                    req.totp_code = code
                else:
                    req.recovery_code = form.get("code", "").strip()
                await self.d.auth.DisableTotp(req, timeout=10)
                return RedirectResponse("/account?done=totp-off", status_code=303)
        except grpc.aio.AioRpcError as exc:
            return await self._account_page(
                request, user, 400, error=from_rpc_error(exc).public_message
            )
        return self.message(request, user, "Not found", "No such action.", 404)

    async def token_revoke(self, request: Request) -> Response:
        token_id = request.path_params["token_id"]
        return await self.form_action(
            request,
            lambda user: self.d.auth.RevokeApiToken(
                auth_pb2.RevokeApiTokenRequest(caller=user.credential(), token_id=token_id),
                timeout=10,
            ),
            "/account?done=revoked",
        )

    # -- admin --------------------------------------------------------------------------------

    async def admin(self, request: Request, **extra: Any) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        if not user.is_admin:
            return self.message(request, user, "Not allowed", "This page is for admins.", 403)
        return await self._admin_page(request, user, **extra)

    async def _admin_page(self, request: Request, user: WebUser, **extra: Any) -> Response:
        services = {n: await rpc.check_health(addr, 2) for n, addr in self.d.peers.items()}
        accounts = await self.d.auth.ListAccounts(
            auth_pb2.ListAccountsRequest(
                caller=user.credential(), page=common_pb2.PageRequest(page_size=500)
            ),
            timeout=10,
        )
        grains = await self.d.grainmgr.ListGrains(
            grainmgr_pb2.ListGrainsRequest(
                include_trashed=True, page=common_pb2.PageRequest(page_size=500)
            ),
            timeout=10,
        )
        apps = await self.d.grainmgr.ListPackages(
            grainmgr_pb2.ListPackagesRequest(page=common_pb2.PageRequest(page_size=500)),
            timeout=10,
        )
        names = {a.account_id: a.display_name for a in accounts.accounts}
        per_user: dict[str, list[int]] = {}
        for g in grains.grains:
            n = per_user.setdefault(g.owner_account_id, [0, 0])
            n[0] += 1
            n[1] += g.size_bytes
        acc = [
            {"account_id": a.account_id, "display_name": a.display_name, "email": a.email,
             "is_admin": a.is_admin, "disabled": a.disabled, "is_visitor": a.is_visitor,
             "is_self": a.account_id == user.account_id,
             "grains": per_user.get(a.account_id, [0, 0])[0],
             "size": human_size(per_user.get(a.account_id, [0, 0])[1])}
            for a in accounts.accounts
            if a.email  # the built-in operator account (no email) is no person to manage
        ]  # fmt: skip
        invitations = await self.d.auth.ListInvitations(
            auth_pb2.ListInvitationsRequest(
                caller=user.credential(), page=common_pb2.PageRequest(page_size=200)
            ),
            timeout=10,
        )
        invs = [
            {"invitation_id": i.invitation_id, "email": i.email or "anyone with the link",
             "admin": i.grants_admin, "created": when(i.created_at),
             "expires": when(i.expires_at),
             "by": names.get(i.created_by, i.created_by)}
            for i in invitations.invitations
        ]  # fmt: skip
        # Storage per owner, biggest first: every owner with a grain (trashed ones count, they
        # still use the disk), including owners the account list no longer names.
        storage = [
            {"account_id": owner, "owner": names.get(owner, owner), "grains": n[0], "bytes": n[1],
             "size": human_size(n[1])}
            for owner, n in sorted(per_user.items(), key=lambda kv: -kv[1][1])
        ]  # fmt: skip
        gs = [
            {"grain_id": g.grain_id, "title": g.title, "app_title": g.app_title,
             "size": human_size(g.size_bytes), "bytes": g.size_bytes,
             "owner": names.get(g.owner_account_id, g.owner_account_id)}
            for g in sorted(grains.grains, key=lambda g: -g.size_bytes)
        ]  # fmt: skip
        ap = [
            {"title": p.title, "version": p.version, "marketing_version": p.marketing_version,
             "grain_count": p.grain_count, "size": human_size(p.size_bytes)}
            for p in apps.packages
        ]  # fmt: skip
        return self.render(
            request,
            "admin.html",
            user,
            services=services,
            accounts=acc,
            invitations=invs,
            grains=gs,
            storage=storage,
            apps=ap,
            section="admin",
            title="Admin",
            **extra,
        )

    async def admin_invite(self, request: Request) -> Response:
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        form = await self.post_form(request, user)
        try:
            made = await self.d.auth.CreateInvitation(
                auth_pb2.CreateInvitationRequest(
                    caller=user.credential(),
                    email=form.get("email", "").strip(),
                    grants_admin=form.get("admin") == "1",
                    base_url=self.d.public_url,
                ),
                timeout=15,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        return await self._admin_page(request, user, invite_url=made.url)

    async def admin_user(self, request: Request) -> Response:
        """Disable, enable, promote or make a visitor (POST /admin/users/{account_id}/{op})."""
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        await self.post_form(request, user)
        op = request.path_params["op"]
        if op in ("promote", "make-visitor"):
            return await self._admin_visitor(request, user, visitor=op == "make-visitor")
        if op not in ("disable", "enable"):
            return self.message(request, user, "Not found", "No such action.", 404)
        try:
            done = await self.d.auth.SetAccountDisabled(
                auth_pb2.SetAccountDisabledRequest(
                    caller=user.credential(),
                    account_id=request.path_params["account_id"],
                    disabled=op == "disable",
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        name = done.account.display_name
        verb = (
            "disabled: its sessions and API tokens were revoked"
            if done.account.disabled
            else "enabled"
        )
        return await self._admin_page(request, user, notice=f"{name} is {verb}.")

    async def _admin_visitor(self, request: Request, user: WebUser, visitor: bool) -> Response:
        """Promote a visitor to a full user (may create grains), or make a user a visitor."""
        try:
            done = await self.d.auth.SetAccountVisitor(
                auth_pb2.SetAccountVisitorRequest(
                    caller=user.credential(),
                    account_id=request.path_params["account_id"],
                    visitor=visitor,
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        name = done.account.display_name
        verb = "a visitor now" if done.account.is_visitor else "a full user now: can create grains"
        return await self._admin_page(request, user, notice=f"{name} is {verb}.")

    async def admin_invitation_revoke(self, request: Request) -> Response:
        invitation_id = request.path_params["invitation_id"]
        return await self.form_action(
            request,
            lambda user: self.d.auth.RevokeInvitation(
                auth_pb2.RevokeInvitationRequest(
                    caller=user.credential(), invitation_id=invitation_id
                ),
                timeout=10,
            ),
            "/admin?done=revoked",
        )
