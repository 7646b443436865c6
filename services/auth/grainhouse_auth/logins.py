"""Logging in: account creation with a ticket, password, TOTP step, email link, dev login.

Owns: the login flows and their rate limits (the order of checks is the security here).
Trusts: accounts, sessions, tickets, totp and ratelimit modules for storage.
Never: tells a stranger whether an email has an account (one answer, same cost for both);
logs a password, a code or a secret.

Visitors: an email link sent to an address without an account (when `visitor_signup` is on)
creates, once opened, a *visitor* account: it can open what is shared with it but cannot create
grains (Account.can_create_grains). Invitations, setup links, OIDC (which needs an invitation)
and dev logins make full users.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from authlib.common.security import generate_token
from psycopg_pool import AsyncConnectionPool

from grainhouse_auth import accounts, metrics, oidc, passwords, ratelimit, sessions, tickets, totp
from grainhouse_auth.accounts import Account
from grainhouse_auth.events import Events
from grainhouse_auth.mailer import Mailer
from grainhouse_auth.store import Conn
from grainhouse_common.errors import GrainhouseError, Kind

OIDC_STATE_SECONDS = 600
CHALLENGE_SECONDS = 300
CHALLENGE_ATTEMPTS = 5
WRONG_LOGIN = "email or password is wrong"
_EMAIL_POLICY = ratelimit.Policy(free=3, base_delay=60, max_delay=900, block_after=10)


@dataclass(frozen=True)
class Client:
    remote_addr: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class LoggedIn:
    secret: str
    session: sessions.Session
    account: Account


@dataclass(frozen=True)
class Challenge:
    secret: str
    expires_at: datetime


Outcome = LoggedIn | Challenge


class Logins:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        events: Events,
        mailer: Mailer,
        timeouts: sessions.Timeouts,
        limits: ratelimit.Policy,
        *,
        dev_mode: bool,
        public_url: str,
        email_code_ttl: int,
        oidc_client: oidc.Oidc | None = None,
        visitor_signup: bool = True,
    ) -> None:
        self.visitor_signup = visitor_signup
        self.oidc = oidc_client or oidc.Oidc({})
        self.pool = pool
        self.events = events
        self.mailer = mailer
        self.timeouts = timeouts
        self.limits = limits
        self.dev_mode = dev_mode
        self.public_url = public_url.rstrip("/")
        self.email_code_ttl = email_code_ttl

    # -- the last step of every login --

    async def _open(self, conn: Conn, account: Account, method: str, client: Client) -> LoggedIn:
        secret, session = await sessions.create(
            conn, account.account_id, method, self.timeouts, client.user_agent, client.remote_addr
        )
        await accounts.mark_login(conn, account.account_id)
        fresh = await accounts.get(conn, account.account_id)
        assert fresh is not None
        await self.events.audit(
            "login",
            account_id=account.account_id,
            session_id=session.session_id,
            method=method,
            remote_addr=client.remote_addr,
        )
        metrics.login_succeeded(method)
        return LoggedIn(secret, session, fresh)

    async def _second_step_or_open(
        self, conn: Conn, account: Account, method: str, client: Client
    ) -> Outcome:
        if account.totp_enabled:
            secret, ticket = await tickets.issue(
                conn,
                "challenge",
                CHALLENGE_SECONDS,
                account_id=account.account_id,
                data={"method": method},
            )
            return Challenge(secret, ticket.expires_at)
        return await self._open(conn, account, method, client)

    # -- account creation --

    async def create_account(
        self,
        which: str,
        ticket_secret: str,
        email: str,
        display_name: str,
        handle: str,
        password: str,
        client: Client,
    ) -> Outcome:
        email, name, handle = accounts.check_details(email, display_name, handle)
        hashed = passwords.hash_password(password) if password else None
        kind: tickets.TicketKind = "setup" if which == "setup_link_secret" else "invitation"
        async with self.pool.connection() as conn, conn.transaction():
            # Consumed inside the transaction: a failure below gives the ticket back.
            ticket = await tickets.consume(conn, kind, ticket_secret)
            if ticket is None:
                raise GrainhouseError(Kind.NOT_FOUND, "link unknown, used or expired")
            if ticket.email and ticket.email != email:
                raise GrainhouseError(Kind.PERMISSION, "this invitation is for another email")
            account = await accounts.create(
                conn,
                email=email,
                display_name=name,
                handle=handle,
                is_admin=kind == "setup" or ticket.grants_admin,
                password_hash=hashed,
            )
            await self.events.audit(
                "account_created",
                account_id=account.account_id,
                via=kind,
                ticket_id=ticket.ticket_id,
                is_admin=account.is_admin,
            )
            return await self._open(
                conn, account, "setup" if kind == "setup" else "invitation", client
            )

    # -- password --

    async def password(self, email: str, password: str, client: Client) -> Outcome:
        if not email.strip() or not password:
            raise GrainhouseError(Kind.INVALID, "email and password are required")
        acct_key = ratelimit.account_key("login", email)
        keys = ratelimit.keys(acct_key, ratelimit.address_key("login", client.remote_addr))
        async with self.pool.connection() as conn:
            await metrics.counted("password", ratelimit.check(conn, keys))
            account = await accounts.by_email(conn, email)
            ok = await accounts.verify_password(conn, account, password)
            if not ok or account is None or account.disabled:
                metrics.login_failed("password", "disabled" if ok else "bad_credentials")
                await ratelimit.fail(conn, keys, self.limits)
                await self.events.audit(
                    "login_failed",
                    method="password",
                    account_id=account.account_id if account else "",
                    remote_addr=client.remote_addr,
                )
                # Kept although the call fails: the pool rolls back on an exception.
                await conn.commit()
                raise GrainhouseError(Kind.UNAUTHENTICATED, WRONG_LOGIN)
            await ratelimit.clear(conn, acct_key)
            return await self._second_step_or_open(conn, account, "password", client)

    async def verify_totp(
        self, challenge_secret: str, code: str, recovery: bool, client: Client
    ) -> LoggedIn:
        denied = GrainhouseError(Kind.UNAUTHENTICATED, "code wrong or challenge expired")
        async with self.pool.connection() as conn:
            ticket = await tickets.peek(conn, "challenge", challenge_secret)
            if ticket is None or ticket.account_id is None:
                raise denied
            keys = ratelimit.keys(
                ratelimit.account_key("totp", ticket.account_id),
                ratelimit.address_key("totp", client.remote_addr),
            )
            await metrics.counted("totp", ratelimit.check(conn, keys))
            account_id = ticket.account_id
            if recovery:
                ok = await totp.use_recovery_code(conn, account_id, code)
            else:
                ok = await totp.verify(conn, account_id, code)
            if not ok:
                metrics.login_failed("totp", "bad_credentials")
                await ratelimit.fail(conn, keys, self.limits)
                await self.events.audit(
                    "login_failed",
                    method="totp",
                    account_id=account_id,
                    remote_addr=client.remote_addr,
                )
                last = await tickets.fail_attempt(conn, ticket.ticket_id, CHALLENGE_ATTEMPTS)
                await conn.commit()  # the count must survive the failed call
                if last:
                    raise GrainhouseError(Kind.OVERLOADED, "too many wrong codes: log in again")
                raise denied
            if not await tickets.finish(conn, ticket.ticket_id):
                raise denied
            await ratelimit.clear(conn, keys[0])
            account = await accounts.get(conn, account_id)
            if account is None or account.disabled:
                raise denied
            method = str(ticket.data.get("method", "password")) + "+totp"
            return await self._open(conn, account, method, client)

    # -- email link --

    async def start_email(self, email: str, link_base_url: str, client: Client) -> None:
        email = accounts.check_email(email)
        if not self.mailer.config.configured:
            raise GrainhouseError(Kind.CONFLICT, "email login is not configured")
        if not (
            link_base_url == self.public_url or link_base_url.startswith(self.public_url + "/")
        ):
            raise GrainhouseError(Kind.INVALID, "link_base_url: must be on the platform's origin")
        keys = ratelimit.keys(
            ratelimit.account_key("email", email),
            ratelimit.address_key("email", client.remote_addr),
        )
        async with self.pool.connection() as conn:
            await metrics.counted("email", ratelimit.check(conn, keys))
            # Every request counts, found or not, so the limit reveals nothing either.
            await ratelimit.fail(conn, keys, _EMAIL_POLICY)
            account = await accounts.by_email(conn, email)
            if account is not None and account.disabled:
                return
            if account is None and not self.visitor_signup:
                return
            # No account yet: the ticket carries the address; opening the link proves it and
            # creates a visitor account (finish_email). The answer is the same either way.
            secret, _ = await tickets.issue(
                conn,
                "email",
                self.email_code_ttl,
                account_id=None if account is None else account.account_id,
                email="" if account is not None else email,
            )
        link = f"{link_base_url}?code={secret}"
        await self.mailer.send(
            email,
            "Your Grainhouse login link",
            f"Open this link within {self.email_code_ttl // 60} minutes to log in:\n\n{link}\n\n"
            "If you did not ask for it, ignore this mail.",
            link,
        )
        await self.events.audit(
            "email_login_sent", account_id="" if account is None else account.account_id
        )

    async def finish_email(self, code: str, client: Client) -> Outcome:
        async with self.pool.connection() as conn:
            ticket = await tickets.consume(conn, "email", code)
            account = None if ticket is None else await self._email_account(conn, ticket)
            if account is None or account.disabled:
                metrics.login_failed("email", "bad_credentials" if account is None else "disabled")
                await self.events.audit(
                    "login_failed", method="email", remote_addr=client.remote_addr
                )
                raise GrainhouseError(Kind.UNAUTHENTICATED, "login link unknown, used or expired")
            return await self._second_step_or_open(conn, account, "email", client)

    async def _email_account(self, conn: Conn, ticket: tickets.Ticket) -> Account | None:
        """The account an email ticket logs in; a new visitor for a sign-up ticket."""
        if ticket.account_id:
            return await accounts.get(conn, ticket.account_id)
        if not ticket.email:
            return None
        existing = await accounts.by_email(conn, ticket.email)
        if existing is not None:  # made meanwhile (invitation, or another link): log that in
            return existing
        account = await accounts.create(
            conn,
            email=ticket.email,
            display_name=ticket.email.split("@")[0][:100] or ticket.email,
            is_visitor=True,
        )
        await self.events.audit(
            "account_created",
            account_id=account.account_id,
            via="email",
            ticket_id=ticket.ticket_id,
            is_admin=False,
            is_visitor=True,
        )
        return account

    # -- development --

    async def dev(self, display_name: str, is_admin: bool, client: Client) -> LoggedIn:
        if not self.dev_mode:
            raise GrainhouseError(Kind.CONFLICT, "dev login is only available in dev mode")
        name = display_name.strip()
        if not 1 <= len(name) <= 100:
            raise GrainhouseError(Kind.INVALID, "display_name: 1 to 100 characters")
        async with self.pool.connection() as conn:
            account = await accounts.find_dev(conn, name)
            if account is None:
                account = await accounts.create(
                    conn, email=None, display_name=name, is_admin=is_admin, is_dev=True
                )
            elif account.is_admin != is_admin:
                await accounts.set_admin(conn, account.account_id, is_admin)
            return await self._open(conn, account, "dev", client)

    # -- OpenID Connect ---------------------------------------------------------------------

    async def start_oidc(
        self, provider: str, redirect_uri: str, invitation_secret: str
    ) -> tuple[str, str]:
        """(authorization URL, state secret)."""
        p = self.oidc.provider(provider)
        if redirect_uri not in p.redirect_uris:
            raise GrainhouseError(Kind.INVALID, "redirect_uri: not registered for this provider")
        await self.oidc.metadata(p)  # fail before keeping any state if the provider is down
        nonce, verifier = generate_token(32), generate_token(64)
        async with self.pool.connection() as conn:
            invitation_id = ""
            if invitation_secret:
                inv = await tickets.peek(conn, "invitation", invitation_secret)
                if inv is None:
                    raise GrainhouseError(Kind.NOT_FOUND, "invitation unknown, used or expired")
                invitation_id = inv.ticket_id
            # The nonce and PKCE verifier live 10 minutes under the hashed state secret.
            state, _ = await tickets.issue(
                conn,
                "oidc_state",
                OIDC_STATE_SECONDS,
                data={
                    "provider": provider,
                    "redirect_uri": redirect_uri,
                    "nonce": nonce,
                    "verifier": verifier,
                    "invitation_id": invitation_id,
                },
            )
        started = await self.oidc.start(p, redirect_uri, state, nonce, verifier)
        return started, state

    async def finish_oidc(
        self,
        provider: str,
        state_secret: str,
        callback_state: str,
        code: str,
        redirect_uri: str,
        client: Client,
    ) -> Outcome:
        p = self.oidc.provider(provider)
        mismatch = GrainhouseError(Kind.PERMISSION, "login state mismatch: start again")
        if not state_secret or not hmac.compare_digest(
            state_secret.encode(), callback_state.encode()
        ):
            raise mismatch
        async with self.pool.connection() as conn:
            state = await tickets.consume(conn, "oidc_state", state_secret)
        if state is None or state.data.get("provider") != provider:
            raise mismatch
        if state.data.get("redirect_uri") != redirect_uri:
            raise mismatch
        claims = await self.oidc.finish(
            p, code, redirect_uri, str(state.data["verifier"]), str(state.data["nonce"])
        )
        subject = str(claims["sub"])
        method = f"oidc:{provider}"
        async with self.pool.connection() as conn, conn.transaction():
            account_id = await oidc.account_for(conn, provider, subject)
            if account_id is not None:
                account = await accounts.get(conn, account_id)
                if account is None or account.disabled:
                    metrics.login_failed("oidc", "disabled")
                    raise GrainhouseError(Kind.UNAUTHENTICATED, "account disabled")
                return await self._second_step_or_open(conn, account, method, client)
            invitation_id = str(state.data.get("invitation_id") or "")
            if not invitation_id:
                metrics.login_failed("oidc", "not_allowed")
                raise GrainhouseError(
                    Kind.PERMISSION, "no account uses this login yet: ask for an invitation"
                )
            invitation = await tickets.consume_by_id(conn, "invitation", invitation_id)
            if invitation is None:
                raise GrainhouseError(Kind.PERMISSION, "the invitation was used or has expired")
            email = str(claims.get("email") or "")
            if not email or claims.get("email_verified") is False:
                raise GrainhouseError(Kind.PERMISSION, "the provider gave no verified email")
            email = accounts.check_email(email)
            if invitation.email and invitation.email != email:
                raise GrainhouseError(Kind.PERMISSION, "this invitation is for another email")
            name = str(claims.get("name") or email.split("@")[0]).strip()[:100] or email
            account = await accounts.create(
                conn, email=email, display_name=name, is_admin=invitation.grants_admin
            )
            await oidc.link(conn, account.account_id, provider, subject)
            await self.events.audit(
                "account_created",
                account_id=account.account_id,
                via=method,
                ticket_id=invitation.ticket_id,
                is_admin=account.is_admin,
            )
            fresh = await accounts.get(conn, account.account_id)
            assert fresh is not None
            return await self._open(conn, fresh, method, client)
