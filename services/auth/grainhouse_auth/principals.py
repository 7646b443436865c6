"""Resolving a Credential (session cookie, bearer token, share link) to who is calling.

Owns: the Principal value every decision starts from.
Trusts: sessions, tokens and grains modules to check secrets in constant time.
Never: trusts a principal the caller describes: only secrets are accepted, and every failure
gives the same UNAUTHENTICATED answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from grainhouse_auth import accounts, credentials, grains, sessions, tokens
from grainhouse_auth.accounts import Account
from grainhouse_auth.permissions import Grantee
from grainhouse_auth.store import Conn
from grainhouse_common.errors import GrainhouseError, Kind

PrincipalKind = Literal["session", "api_token", "share_link", "grain_token"]
_SCOPE_RANK = {"": 0, "read": 1, "write": 2, "admin": 3}


class AccountDisabledError(GrainhouseError):
    def __init__(self) -> None:
        super().__init__(Kind.UNAUTHENTICATED, "account disabled")


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    credential_id: str
    account: Account | None
    scope: str  # "read" | "write" | "admin" | "" (grain-bound kinds)
    grain_id: str = ""
    expires_at: datetime | None = None
    session: sessions.Session | None = None
    token: tokens.Token | None = None

    @property
    def account_id(self) -> str:
        return "" if self.account is None else self.account.account_id

    @property
    def is_admin(self) -> bool:
        return self.account is not None and self.account.is_admin and self.scope == "admin"

    @property
    def grantee(self) -> Grantee:
        if self.kind == "share_link":
            return Grantee("share_link", self.credential_id)
        if self.kind == "grain_token":
            return Grantee("grain_token", self.credential_id)
        return Grantee("account", self.account_id)

    def has_scope(self, needed: str) -> bool:
        return _SCOPE_RANK[self.scope] >= _SCOPE_RANK[needed]


# Where the hash of each kind of secret is kept (for `was_issued`); constant table names.
_ISSUED_IN = {
    credentials.SESSION: "sessions",
    credentials.API_TOKEN: "api_tokens",
    credentials.SHARE_LINK: "grain_credentials",
    credentials.GRAIN_TOKEN: "grain_credentials",
}


async def was_issued(conn: Conn, secret: str) -> bool:
    """True if this secret was issued and its row is still kept (ended, expired or revoked):
    a stale credential, not a guess (ratelimit.guarded counts only guesses)."""
    table = next((t for p, t in _ISSUED_IN.items() if credentials.plausible(secret, p)), None)
    if table is None:
        return False
    cur = await conn.execute(
        f"SELECT 1 FROM {table} WHERE secret_hash = %s",  # noqa: S608 - constant table names
        (credentials.hash_secret(secret),),
    )
    return await cur.fetchone() is not None


def denied() -> GrainhouseError:
    return GrainhouseError(Kind.UNAUTHENTICATED, "credential unknown, expired or revoked")


async def from_session(
    conn: Conn, secret: str, timeouts: sessions.Timeouts, touch: bool = False
) -> Principal:
    session = await sessions.resolve(conn, secret, touch, timeouts)
    account = await accounts.get(conn, session.account_id)
    if account is None:
        raise denied()
    if account.disabled:
        raise AccountDisabledError()
    return Principal(
        kind="session",
        credential_id=session.session_id,
        account=account,
        scope="admin" if account.is_admin else "write",
        expires_at=min(session.idle_expires_at, session.absolute_expires_at),
        session=session,
    )


async def from_bearer(conn: Conn, secret: str) -> Principal:
    if secret.startswith(credentials.GRAIN_TOKEN):
        found = await grains.find_credential(conn, "grain_token", secret)
        if found is None:
            raise denied()
        cred_id, grain_id = found
        await _require_live_grant(conn, grain_id, Grantee("grain_token", cred_id))
        await grains.touch_credential(conn, cred_id)
        return Principal("grain_token", cred_id, None, "", grain_id=grain_id)
    token = await tokens.authenticate(conn, secret)
    account = await accounts.get(conn, token.account_id)
    if account is None:
        raise denied()
    top = max(token.scopes, key=lambda s: _SCOPE_RANK[s])
    if top == "admin" and not account.is_admin:
        top = "write"  # an account that lost the admin role loses the power with it
    return Principal(
        "api_token", token.token_id, account, top, expires_at=token.expires_at, token=token
    )


async def from_share_link(conn: Conn, secret: str) -> Principal:
    found = await grains.find_credential(conn, "share_link", secret)
    if found is None:
        raise denied()
    cred_id, grain_id = found
    await _require_live_grant(conn, grain_id, Grantee("share_link", cred_id))
    return Principal("share_link", cred_id, None, "", grain_id=grain_id)


async def _require_live_grant(conn: Conn, grain_id: str, grantee: Grantee) -> None:
    snap = await grains.load(conn, grain_id, datetime.now(UTC))
    if snap is None or snap.graph.access_of(grantee) is None:
        raise denied()


async def resolve(
    conn: Conn, which: str | None, secret: str, timeouts: sessions.Timeouts
) -> Principal:
    """`which` is the Credential oneof field name; INVALID if unset, else UNAUTHENTICATED."""
    if which is None or not secret:
        raise GrainhouseError(Kind.INVALID, "credential: exactly one secret must be set")
    if which == "session_secret":
        return await from_session(conn, secret, timeouts)
    if which == "bearer_secret":
        return await from_bearer(conn, secret)
    return await from_share_link(conn, secret)
