"""Auth RPCs for accounts and logins: sign-up, password, TOTP, email link, dev, OIDC, sessions.

Owns: decoding these requests and encoding their results.
Trusts: logins.py and the other core modules for every decision.
Never: returns a secret except in the single response that creates it.
"""

from __future__ import annotations

import grpc

from grainhouse_auth import (
    accounts,
    convert,
    oidc,
    passwords,
    principals,
    ratelimit,
    sessions,
    totp,
)
from grainhouse_auth.principals import Principal
from grainhouse_auth.service_base import Ctx, ServicerBase, client_info
from grainhouse_auth.store import Conn
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2


class LoginRpcs(ServicerBase):
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
                client_info(request.client),
            )
        except accounts.EmailTakenError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, exc.public_message)
        return convert.login_result(outcome)

    async def LoginPassword(
        self, request: auth_pb2.LoginPasswordRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        outcome = await self.logins.password(
            request.email, request.password, client_info(request.client)
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
            client_info(request.client),
        )
        return convert.login_result(done)

    async def StartEmailLogin(
        self, request: auth_pb2.StartEmailLoginRequest, context: Ctx
    ) -> auth_pb2.StartEmailLoginResponse:
        await self.logins.start_email(
            request.email, request.link_base_url, client_info(request.client)
        )
        return auth_pb2.StartEmailLoginResponse()

    async def FinishEmailLogin(
        self, request: auth_pb2.FinishEmailLoginRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        outcome = await self.logins.finish_email(request.code, client_info(request.client))
        return convert.login_result(outcome)

    async def DevLogin(
        self, request: auth_pb2.DevLoginRequest, context: Ctx
    ) -> auth_pb2.LoginResult:
        done = await self.logins.dev(
            request.display_name, request.is_admin, client_info(request.client)
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
            client_info(request.client),
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

    async def _check_code(self, conn: Conn, account_id: str, code: str, recovery: bool) -> None:
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
