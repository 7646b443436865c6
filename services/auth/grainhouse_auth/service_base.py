"""What every auth RPC group shares: wiring, the caller's principal, TTL rules, operator checks.

Owns: the servicer's state (settings, pool, events, limits, mailer, OIDC) and the helpers that
resolve who is calling (`_caller`, `_guarded_caller`, `_session_caller`, `_admin_caller`).
Trusts: nothing in a request: every credential is checked by the core (principals.py).
Never: logs a secret; holds per-request state.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc
from psycopg_pool import AsyncConnectionPool

from grainhouse_auth import (
    logins,
    oidc,
    operator_key,
    principals,
    ratelimit,
    sessions,
)
from grainhouse_auth.events import Events
from grainhouse_auth.mailer import MailConfig, Mailer
from grainhouse_auth.principals import Principal
from grainhouse_auth.settings import AuthSettings
from grainhouse_auth.sharing import Sharing
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.runtime import Runtime
from grainhouse_proto import auth_pb2, auth_pb2_grpc

Ctx: TypeAlias = grpc.aio.ServicerContext
ANONYMOUS = "Anonymous visitor"


def client_info(c: auth_pb2.ClientInfo) -> logins.Client:
    return logins.Client(remote_addr=c.remote_addr[:64], user_agent=c.user_agent[:256])


class ServicerBase(auth_pb2_grpc.AuthServicer):
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
    def pool(self) -> AsyncConnectionPool:
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
