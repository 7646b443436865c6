"""Auth RPCs for administration: operator tokens, setup links, invitations, accounts.

Owns: decoding these requests and encoding their results; the admin-only checks at this edge.
Trusts: admin_accounts.py, tickets.py and accounts.py for every change.
Never: lets a non-admin caller through; returns a secret except once, on creation.
"""

from __future__ import annotations

from grainhouse_auth import (
    accounts,
    admin_accounts,
    convert,
    logins,
    sessions,
    tickets,
    tokens,
)
from grainhouse_auth.service_base import Ctx, ServicerBase
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.timestamps import timestamp
from grainhouse_proto import auth_pb2


class AdminRpcs(ServicerBase):
    async def IssueAdminToken(
        self, request: auth_pb2.IssueAdminTokenRequest, context: Ctx
    ) -> auth_pb2.IssueAdminTokenResponse:
        await self._operator(request.operator_key.key_secret, "IssueAdminToken")
        account_id = request.account_id or tokens.OPERATOR_ACCOUNT
        ttl = self._ttl(request.ttl_seconds)
        async with self.pool.connection() as conn:
            target = await accounts.get(conn, account_id)
            if target is None:
                raise GrainhouseError(Kind.NOT_FOUND, "account not found")
            if not target.is_admin or target.disabled:
                raise GrainhouseError(Kind.CONFLICT, "account is not an enabled admin")
            secret, token = await tokens.issue(conn, account_id, request.name, ("admin",), ttl)
        await self.events.audit(
            "token_created",
            kind="api_token",
            token_id=token.token_id,
            account_id=account_id,
            scopes=["admin"],
            via="operator_key",
        )
        return auth_pb2.IssueAdminTokenResponse(token_secret=secret, token=convert.api_token(token))

    async def CreateSetupLink(
        self, request: auth_pb2.CreateSetupLinkRequest, context: Ctx
    ) -> auth_pb2.CreateSetupLinkResponse:
        await self._operator(request.operator_key.key_secret, "CreateSetupLink")
        ttl = request.ttl_seconds or self.settings.setup_link_ttl_seconds
        async with self.pool.connection() as conn:
            secret, ticket = await tickets.issue(conn, "setup", ttl, grants_admin=True)
        await self.events.audit("setup_link_created", ticket_id=ticket.ticket_id)
        resp = auth_pb2.CreateSetupLinkResponse(
            url=f"{self._base(request.base_url)}/setup/{secret}", setup_link_secret=secret
        )
        resp.expires_at.CopyFrom(timestamp(ticket.expires_at))
        return resp

    async def RedeemSetupLink(
        self, request: auth_pb2.RedeemSetupLinkRequest, context: Ctx
    ) -> auth_pb2.RedeemSetupLinkResponse:
        p = await self._session_caller(request.caller)
        assert p.session is not None
        async with self.pool.connection() as conn, conn.transaction():
            ticket = await tickets.consume(conn, "setup", request.setup_link_secret)
            if ticket is None:
                raise GrainhouseError(Kind.NOT_FOUND, "link unknown, used or expired")
            await accounts.set_admin(conn, p.account_id, True)
            # A privilege change: the old session id must not carry the new power.
            secret, fresh = await sessions.rotate(conn, p.session, "setup", self.timeouts)
            account = await accounts.get(conn, p.account_id)
            assert account is not None
        await self.events.revoked(credential_ids=[p.session.session_id])
        await self.events.audit(
            "admin_promoted", account_id=p.account_id, ticket_id=ticket.ticket_id
        )
        return auth_pb2.RedeemSetupLinkResponse(
            account=convert.account(account),
            session=convert.new_session(logins.LoggedIn(secret, fresh, account)),
        )

    async def CreateInvitation(
        self, request: auth_pb2.CreateInvitationRequest, context: Ctx
    ) -> auth_pb2.CreateInvitationResponse:
        p = await self._admin_caller(request.caller)
        email = accounts.check_email(request.email) if request.email else ""
        if request.send_email and not email:
            raise GrainhouseError(Kind.INVALID, "email: required to send the invitation")
        ttl = request.ttl_seconds or self.settings.invitation_ttl_seconds
        async with self.pool.connection() as conn, conn.transaction():
            secret, ticket = await tickets.issue(
                conn,
                "invitation",
                ttl,
                email=email,
                grants_admin=request.grants_admin,
                created_by=p.account_id,
            )
            url = f"{self._base(request.base_url)}/invite/{secret}"
            if request.send_email:
                # Inside the transaction: if the mail fails, no invitation is kept.
                await self.mailer.send(
                    email,
                    "You are invited to Grainhouse",
                    f"Open this link to create your account:\n\n{url}\n",
                    url,
                )
        await self.events.audit(
            "invitation_created",
            ticket_id=ticket.ticket_id,
            by=p.account_id,
            grants_admin=request.grants_admin,
        )
        inv = auth_pb2.Invitation(
            invitation_id=ticket.ticket_id,
            email=email,
            created_by=p.account_id,
            grants_admin=ticket.grants_admin,
        )
        inv.created_at.CopyFrom(timestamp(ticket.created_at))
        inv.expires_at.CopyFrom(timestamp(ticket.expires_at))
        return auth_pb2.CreateInvitationResponse(invitation=inv, invitation_secret=secret, url=url)

    async def ListAccounts(
        self, request: auth_pb2.ListAccountsRequest, context: Ctx
    ) -> auth_pb2.ListAccountsResponse:
        await self._admin_caller(request.caller)
        size = convert.page_size(request.page.page_size)
        async with self.pool.connection() as conn:
            found = await accounts.page(
                conn,
                request.query,
                convert.cursor_in(request.page.page_token),
                size + 1,
                account_id=request.account_id,
            )
        items, token = convert.page_out(found, size, lambda x: (x.created_at, x.account_id))
        resp = auth_pb2.ListAccountsResponse(accounts=[convert.account(x) for x in items])
        resp.page.next_page_token = token
        return resp

    async def SetAccountDisabled(
        self, request: auth_pb2.SetAccountDisabledRequest, context: Ctx
    ) -> auth_pb2.SetAccountDisabledResponse:
        p = await self._admin_caller(request.caller)
        done = await admin_accounts.set_disabled(
            self.pool, self.events, p.account_id, request.account_id, request.disabled
        )
        return auth_pb2.SetAccountDisabledResponse(
            account=convert.account(done.account),
            sessions_ended=done.sessions_ended,
            tokens_revoked=done.tokens_revoked,
        )

    async def SetAccountVisitor(
        self, request: auth_pb2.SetAccountVisitorRequest, context: Ctx
    ) -> auth_pb2.SetAccountVisitorResponse:
        p = await self._admin_caller(request.caller)
        async with self.pool.connection() as conn, conn.transaction():
            target = await accounts.get(conn, request.account_id) if request.account_id else None
            if target is None:
                raise GrainhouseError(Kind.NOT_FOUND, "account not found")
            if request.visitor and target.is_admin:
                raise GrainhouseError(Kind.CONFLICT, "an admin cannot be a visitor")
            await accounts.set_visitor(conn, target.account_id, request.visitor)
            account = await accounts.get(conn, target.account_id)
            assert account is not None
        if target.is_visitor != request.visitor:
            # The right to create grains is part of every cached identity of the account: drop
            # them everywhere now (the revocation subject), not when their cache time runs out.
            await self.events.revoked(account_id=account.account_id)
            await self.events.audit(
                "account_promoted" if not request.visitor else "account_made_visitor",
                account_id=account.account_id,
                by=p.account_id,
            )
        return auth_pb2.SetAccountVisitorResponse(account=convert.account(account))

    async def ListInvitations(
        self, request: auth_pb2.ListInvitationsRequest, context: Ctx
    ) -> auth_pb2.ListInvitationsResponse:
        await self._admin_caller(request.caller)
        size = convert.page_size(request.page.page_size)
        async with self.pool.connection() as conn:
            found = await admin_accounts.list_invitations(
                conn, request.include_closed, convert.cursor_in(request.page.page_token), size + 1
            )
        items, token = convert.page_out(found, size, lambda x: (x.created_at, x.invitation_id))
        resp = auth_pb2.ListInvitationsResponse(
            invitations=[admin_accounts.invitation_pb(x) for x in items]
        )
        resp.page.next_page_token = token
        return resp

    async def RevokeInvitation(
        self, request: auth_pb2.RevokeInvitationRequest, context: Ctx
    ) -> auth_pb2.RevokeInvitationResponse:
        p = await self._admin_caller(request.caller)
        async with self.pool.connection() as conn:
            if not await admin_accounts.revoke_invitation(conn, request.invitation_id):
                raise GrainhouseError(Kind.NOT_FOUND, "invitation not found")
        await self.events.audit(
            "invitation_revoked", ticket_id=request.invitation_id, by=p.account_id
        )
        return auth_pb2.RevokeInvitationResponse()
