"""The auth service's gRPC edge: decode, resolve the caller, call the core, encode.

Owns: the mapping between `grainhouse.auth.v1` messages and the core modules.
Trusts: nothing in a request: every credential is checked by the core (principals.py).
Never: logs a secret or returns one except in the single response that creates it.

OpenID Connect providers come from settings (`oidc_providers`); with none configured, both
OIDC RPCs answer NOT_FOUND for any provider name, as the contract says for unknown ones.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from grainhouse_auth import (
    accounts,
    admin_accounts,
    convert,
    logins,
    metrics,
    oidc,
    operator_key,
    passwords,
    principals,
    ratelimit,
    sessions,
    tickets,
    tokens,
    totp,
)
from grainhouse_auth.events import Events
from grainhouse_auth.mailer import MailConfig, Mailer
from grainhouse_auth.principals import Principal
from grainhouse_auth.settings import AuthSettings
from grainhouse_auth.sharing import Sharing
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.runtime import Runtime
from grainhouse_proto import auth_pb2, auth_pb2_grpc, common_pb2

Ctx: TypeAlias = grpc.aio.ServicerContext
_ANONYMOUS = "Anonymous visitor"


def token_to_pb(token: tokens.Token) -> auth_pb2.ApiToken:
    return convert.api_token(token)


def _client(c: auth_pb2.ClientInfo) -> logins.Client:
    return logins.Client(remote_addr=c.remote_addr[:64], user_agent=c.user_agent[:256])


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, rt: Runtime, settings: AuthSettings, key: str) -> None:
        self.rt = rt
        self.settings = settings
        self.key = key
        self.events = Events(rt.bus)
        self.timeouts = sessions.Timeouts(
            settings.session_idle_seconds, settings.session_absolute_seconds
        )
        self.limits = ratelimit.Policy(
            free=settings.login_free_failures,
            base_delay=settings.login_base_delay_seconds,
            max_delay=settings.login_max_delay_seconds,
            block_after=settings.login_block_after,
            block_seconds=settings.login_block_seconds,
        )
        self.mailer = Mailer(
            MailConfig(
                host=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value(),
                sender=settings.smtp_sender,
                starttls=settings.smtp_starttls,
                dev_mode=rt.common.dev_mode,
            )
        )
        self.oidc = oidc.Oidc(oidc.parse_providers(settings.oidc_providers.get_secret_value()))
        self._logins: logins.Logins | None = None
        self._sharing: Sharing | None = None

    # -- wiring (the pool exists only once the database is reached) -------------------------

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        if self.rt.db is None or not self.rt.ready.is_set():
            raise GrainhouseError(Kind.UNAVAILABLE, "auth is starting; retry shortly")
        return self.rt.db.pool

    @property
    def logins(self) -> logins.Logins:
        if self._logins is None:
            self._logins = logins.Logins(
                self.pool,
                self.events,
                self.mailer,
                self.timeouts,
                self.limits,
                dev_mode=self.rt.common.dev_mode,
                public_url=self.rt.common.public_url,
                email_code_ttl=self.settings.email_code_ttl_seconds,
                oidc_client=self.oidc,
                visitor_signup=self.settings.visitor_signup,
            )
        return self._logins

    @property
    def sharing(self) -> Sharing:
        if self._sharing is None:
            self._sharing = Sharing(
                self.pool,
                self.events,
                self.settings.share_link_max_ttl_seconds,
                self.settings.authorize_cache_seconds,
            )
        return self._sharing

    def _ttl(self, asked: int) -> int:
        if asked == 0:
            return self.settings.token_default_ttl_seconds
        if asked > self.settings.token_max_ttl_seconds:
            raise GrainhouseError(
                Kind.INVALID,
                f"ttl_seconds: at most {self.settings.token_max_ttl_seconds} "
                "(the server's maximum token lifetime)",
            )
        return asked

    def _base(self, base_url: str) -> str:
        return (base_url or self.rt.common.public_url).rstrip("/")

    async def _caller(self, cred: auth_pb2.Credential) -> Principal:
        which = cred.WhichOneof("secret")
        secret = getattr(cred, which) if which else ""
        async with self.pool.connection() as conn:
            return await principals.resolve(conn, which, secret, self.timeouts)

    async def _guarded_caller(self, cred: auth_pb2.Credential, address: str) -> Principal:
        """`_caller` under the per-address guess limit (ratelimit.guarded)."""
        which = cred.WhichOneof("secret")
        secret = getattr(cred, which) if which else ""
        return await ratelimit.guarded(
            self.pool,
            address,
            self.limits,
            lambda: self._caller(cred),
            spare=(principals.AccountDisabledError,),
            stale=lambda conn: principals.was_issued(conn, secret),
        )

    async def _session_caller(self, cred: auth_pb2.Credential) -> Principal:
        p = await self._caller(cred)
        if p.kind != "session" or p.account is None or p.session is None:
            raise GrainhouseError(Kind.PERMISSION, "only a browser session may do this")
        return p

    async def _admin_caller(self, cred: auth_pb2.Credential) -> Principal:
        p = await self._caller(cred)
        if not p.is_admin:
            raise GrainhouseError(Kind.PERMISSION, "admin only")
        return p

    async def _operator(self, offered: str, rpc: str) -> None:
        if not operator_key.matches(self.key, offered):
            self.rt.log.warning("operator key refused", extra={"rpc": rpc})
            await self.events.audit("operator_key_refused", rpc=rpc)
            raise GrainhouseError(Kind.UNAUTHENTICATED, "operator key refused")

    # -- accounts & logins --

    async def CreateAccount(
        self, request: auth_pb2.CreateAccountRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        which = request.WhichOneof("ticket")
        if which is None:
            raise GrainhouseError(Kind.INVALID, "ticket: an invitation or setup link is required")
        d = request.details
        try:
            outcome = await self.logins.create_account(
                which,
                getattr(request, which),
                d.email,
                d.display_name,
                d.preferred_handle,
                d.password,
                _client(request.client),
            )
        except accounts.EmailTakenError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, exc.public_message)
        return convert.login_result(outcome)

    async def LoginPassword(
        self, request: auth_pb2.LoginPasswordRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        outcome = await self.logins.password(
            request.email, request.password, _client(request.client)
        )
        return convert.login_result(outcome)

    async def VerifyTotp(
        self, request: auth_pb2.VerifyTotpRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        which = request.WhichOneof("proof")
        if which is None or not request.challenge_secret:
            raise GrainhouseError(Kind.INVALID, "challenge_secret and one proof are required")
        done = await self.logins.verify_totp(
            request.challenge_secret,
            getattr(request, which),
            which == "recovery_code",
            _client(request.client),
        )
        return convert.login_result(done)

    async def StartEmailLogin(
        self, request: auth_pb2.StartEmailLoginRequest, context: Ctx
    ) -> auth_pb2.StartEmailLoginResponse:
        await self.logins.start_email(request.email, request.link_base_url, _client(request.client))
        return auth_pb2.StartEmailLoginResponse()

    async def FinishEmailLogin(
        self, request: auth_pb2.FinishEmailLoginRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        outcome = await self.logins.finish_email(request.code, _client(request.client))
        return convert.login_result(outcome)

    async def DevLogin(
        self, request: auth_pb2.DevLoginRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        done = await self.logins.dev(
            request.display_name, request.is_admin, _client(request.client)
        )
        return convert.login_result(done)

    async def StartOidcLogin(
        self, request: auth_pb2.StartOidcLoginRequest, context: Ctx
    ) -> auth_pb2.StartOidcLoginResponse:
        url, state = await self.logins.start_oidc(
            request.provider, request.redirect_uri, request.invitation_secret
        )
        return auth_pb2.StartOidcLoginResponse(authorization_url=url, state_secret=state)

    async def FinishOidcLogin(
        self, request: auth_pb2.FinishOidcLoginRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        outcome = await self.logins.finish_oidc(
            request.provider,
            request.state_secret,
            request.callback_state_secret,
            request.code,
            request.redirect_uri,
            _client(request.client),
        )
        return convert.login_result(outcome)

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Ctx
    ) -> auth_pb2.LogoutResponse:
        if request.session_secret:
            async with self.pool.connection() as conn:
                ended = await sessions.end(conn, request.session_secret)
            if ended is not None:
                await self.events.revoked(credential_ids=[ended.session_id])
                await self.events.audit(
                    "logout", account_id=ended.account_id, session_id=ended.session_id
                )
        return auth_pb2.LogoutResponse()

    async def GetSession(
        self, request: auth_pb2.GetSessionRequest, context: Ctx
    ) -> auth_pb2.GetSessionResponse:
        if not request.session_secret:
            raise GrainhouseError(Kind.UNAUTHENTICATED, sessions.DENIED)

        async def resolve() -> Principal:
            async with self.pool.connection() as conn:
                return await principals.from_session(
                    conn, request.session_secret, self.timeouts, touch=request.touch
                )

        p = await ratelimit.guarded(
            self.pool,
            request.client_address,
            self.limits,
            resolve,
            spare=(principals.AccountDisabledError,),
            stale=lambda conn: principals.was_issued(conn, request.session_secret),
        )
        assert p.session is not None and p.account is not None
        return auth_pb2.GetSessionResponse(
            session=convert.session(p.session),
            account=convert.account(p.account),
            principal=convert.principal(p),
        )

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Ctx
    ) -> auth_pb2.ChangePasswordResponse:
        p = await self._session_caller(request.caller)
        assert p.account is not None and p.session is not None
        account_id = p.account.account_id
        new_hash = passwords.hash_password(request.new_password) if request.new_password else None
        key = ratelimit.account_key("password", account_id)
        async with self.pool.connection() as conn:
            await ratelimit.check(conn, [key])
            stored = await accounts.password_hash(conn, account_id)
            if stored is not None and not passwords.verify(stored, request.old_password):
                await ratelimit.fail(conn, [key], self.limits)
                await conn.commit()  # the count must survive the failed call
                raise GrainhouseError(Kind.UNAUTHENTICATED, "old password is wrong")
        async with self.pool.connection() as conn, conn.transaction():
            other_way = self.mailer.config.configured or await oidc.has_link(conn, account_id)
            if new_hash is None and not other_way:
                raise GrainhouseError(
                    Kind.CONFLICT, "without a password this account could not log in"
                )
            await accounts.set_password_hash(conn, account_id, new_hash)
            ended = await sessions.end_others(conn, account_id, p.session.session_id)
        await self.events.revoked(credential_ids=ended)
        await self.events.audit(
            "password_changed", account_id=account_id, sessions_ended=len(ended)
        )
        return auth_pb2.ChangePasswordResponse()

    # -- second factor --

    async def _check_code(self, conn, account_id: str, code: str, recovery: bool) -> None:  # type: ignore[no-untyped-def]
        key = ratelimit.account_key("totp", account_id)
        await ratelimit.check(conn, [key])
        ok = (
            await totp.use_recovery_code(conn, account_id, code)
            if recovery
            else await totp.verify(conn, account_id, code)
        )
        if not ok:
            await ratelimit.fail(conn, [key], self.limits)
            await conn.commit()  # the count must survive the failed call
            raise GrainhouseError(Kind.UNAUTHENTICATED, "code is wrong")

    async def EnrollTotp(
        self, request: auth_pb2.EnrollTotpRequest, context: Ctx
    ) -> auth_pb2.EnrollTotpResponse:
        p = await self._session_caller(request.caller)
        assert p.account is not None
        if p.account.totp_enabled:
            raise GrainhouseError(Kind.CONFLICT, "two-factor login is already on: disable first")
        async with self.pool.connection() as conn:
            seed, uri = await totp.enroll(
                conn, p.account.account_id, p.account.email or p.account.display_name
            )
        return auth_pb2.EnrollTotpResponse(totp_secret=seed, otpauth_uri=uri)

    async def ConfirmTotp(
        self, request: auth_pb2.ConfirmTotpRequest, context: Ctx
    ) -> auth_pb2.ConfirmTotpResponse:
        p = await self._session_caller(request.caller)
        account_id = p.account_id
        key = ratelimit.account_key("totp", account_id)
        async with self.pool.connection() as conn:
            if not await totp.has_pending(conn, account_id):
                raise GrainhouseError(Kind.CONFLICT, "no two-factor enrolment in progress")
            await ratelimit.check(conn, [key])
            codes = await totp.confirm(conn, account_id, request.totp_code)
            if codes is None:
                await ratelimit.fail(conn, [key], self.limits)
                await conn.commit()  # the count must survive the failed call
                raise GrainhouseError(Kind.UNAUTHENTICATED, "code is wrong")
        await self.events.audit("totp_enabled", account_id=account_id)
        return auth_pb2.ConfirmTotpResponse(recovery_codes=codes)

    async def DisableTotp(
        self, request: auth_pb2.DisableTotpRequest, context: Ctx
    ) -> auth_pb2.DisableTotpResponse:
        p = await self._session_caller(request.caller)
        assert p.account is not None
        if not p.account.totp_enabled:
            return auth_pb2.DisableTotpResponse()
        which = request.WhichOneof("proof")
        if which is None:
            raise GrainhouseError(Kind.UNAUTHENTICATED, "code is wrong")
        async with self.pool.connection() as conn:
            await self._check_code(
                conn, p.account_id, getattr(request, which), which == "recovery_code"
            )
            await totp.disable(conn, p.account_id)
        await self.events.audit("totp_disabled", account_id=p.account_id)
        return auth_pb2.DisableTotpResponse()

    async def RegenerateRecoveryCodes(
        self, request: auth_pb2.RegenerateRecoveryCodesRequest, context: Ctx
    ) -> auth_pb2.RegenerateRecoveryCodesResponse:
        p = await self._session_caller(request.caller)
        assert p.account is not None
        if not p.account.totp_enabled:
            raise GrainhouseError(Kind.CONFLICT, "two-factor login is off")
        async with self.pool.connection() as conn:
            await self._check_code(conn, p.account_id, request.totp_code, False)
            codes = await totp.replace_recovery_codes(conn, p.account_id)
        await self.events.audit("recovery_codes_replaced", account_id=p.account_id)
        return auth_pb2.RegenerateRecoveryCodesResponse(recovery_codes=codes)

    # -- administration --

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
        resp.expires_at.CopyFrom(convert.ts(ticket.expires_at))
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
        inv.created_at.CopyFrom(convert.ts(ticket.created_at))
        inv.expires_at.CopyFrom(convert.ts(ticket.expires_at))
        return auth_pb2.CreateInvitationResponse(invitation=inv, invitation_secret=secret, url=url)

    async def ListAccounts(
        self, request: auth_pb2.ListAccountsRequest, context: Ctx
    ) -> auth_pb2.ListAccountsResponse:
        await self._admin_caller(request.caller)
        size = convert.page_size(request.page.page_size)
        async with self.pool.connection() as conn:
            found = await accounts.page(
                conn, request.query, convert.cursor_in(request.page.page_token), size + 1
            )
        resp = auth_pb2.ListAccountsResponse(accounts=[convert.account(a) for a in found[:size]])
        if len(found) > size:
            last = found[size - 1]
            resp.page.next_page_token = convert.cursor_out(last.created_at, last.account_id)
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
        resp = auth_pb2.ListInvitationsResponse(
            invitations=[admin_accounts.invitation_pb(i) for i in found[:size]]
        )
        if len(found) > size:
            last = found[size - 1]
            resp.page.next_page_token = convert.cursor_out(last.created_at, last.invitation_id)
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

    # -- personal API tokens --

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
        resp = auth_pb2.ListApiTokensResponse(tokens=[convert.api_token(t) for t in found[:size]])
        if len(found) > size:
            last = found[size - 1]
            resp.page.next_page_token = convert.cursor_out(last.created_at, last.token_id)
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

    # -- grains and sharing --

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
        resp = auth_pb2.ListSharedGrainsResponse(
            grains=[admin_accounts.shared_pb(g) for g in found[:size]]
        )
        if len(found) > size:
            last = found[size - 1]
            resp.page.next_page_token = convert.cursor_out(last.cursor_at, last.grain_id)
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
        decision = await self.sharing.decide(p, request.grain_id)
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
            return common_pb2.AppIdentity(display_name=_ANONYMOUS, is_anonymous=True)
        return common_pb2.AppIdentity(
            user_id=who.app_user_id,
            display_name=who.display_name,
            preferred_handle=who.preferred_handle,
        )
