"""Personal API tokens: issue, authenticate, revoke.

Owns: rows of `auth.api_tokens` and the built-in operator account row.
Trusts: the database; callers have already decided the caller may do this.
Never: stores, logs or returns a secret after creation (only its SHA-256 and a hint).

A token secret is `ghp_` + 256 random bits (base64url). Being high-entropy, a plain
SHA-256 is the right stored form (argon2 is for low-entropy passwords); lookup is by hash,
then a constant-time comparison guards against any index-timing side channel.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from grainhouse_common.errors import GrainhouseError, Kind

PREFIX = "ghp_"
OPERATOR_ACCOUNT = "operator"
SCOPES = ("read", "write", "admin")


@dataclass(frozen=True)
class Token:
    token_id: str
    account_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    secret_hint: str
    is_admin_account: bool = False


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _row_to_token(row: Any) -> Token:
    return Token(
        token_id=row[0],
        account_id=row[1],
        name=row[2],
        scopes=tuple(row[3]),
        created_at=row[4],
        expires_at=row[5],
        last_used_at=row[6],
        secret_hint=row[7],
        is_admin_account=bool(row[8]) if len(row) > 8 else False,
    )


async def ensure_operator_account(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO accounts (account_id, email, display_name, is_admin)"
            " VALUES (%s, NULL, 'Operator', true) ON CONFLICT (account_id) DO NOTHING",
            (OPERATOR_ACCOUNT,),
        )


async def issue(
    pool: AsyncConnectionPool,
    account_id: str,
    name: str,
    scopes: tuple[str, ...],
    ttl_seconds: int,
) -> tuple[str, Token]:
    """Create a token; returns (secret, metadata). The secret is never seen again."""
    if not 1 <= len(name) <= 100:
        raise GrainhouseError(Kind.INVALID, "name: must be 1 to 100 characters")
    if not scopes or any(s not in SCOPES for s in scopes):
        raise GrainhouseError(Kind.INVALID, "scopes: at least one of read, write, admin")
    secret = PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(12)
    expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    async with pool.connection() as conn:
        try:
            cur = await conn.execute(
                "INSERT INTO api_tokens (token_id, account_id, name, secret_hash, secret_hint,"
                " scopes, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " RETURNING token_id, account_id, name, scopes, created_at, expires_at,"
                " last_used_at, secret_hint",
                (
                    token_id,
                    account_id,
                    name,
                    hash_secret(secret),
                    secret[:8],
                    list(scopes),
                    expires,
                ),
            )
        except psycopg.errors.ForeignKeyViolation as exc:
            raise GrainhouseError(Kind.NOT_FOUND, "account not found") from exc
        row = await cur.fetchone()
    assert row is not None
    return secret, _row_to_token(row)


async def authenticate(pool: AsyncConnectionPool, secret: str) -> Token:
    """The live token behind `secret`, or UNAUTHENTICATED (same answer for every failure)."""
    denied = GrainhouseError(Kind.UNAUTHENTICATED, "invalid or expired token")
    if not secret.startswith(PREFIX) or len(secret) > 200:
        raise denied
    digest = hash_secret(secret)
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT t.token_id, t.account_id, t.name, t.scopes, t.created_at, t.expires_at,"
            " t.last_used_at, t.secret_hint, a.is_admin, t.secret_hash"
            " FROM api_tokens t JOIN accounts a USING (account_id)"
            " WHERE t.secret_hash = %s AND t.revoked_at IS NULL AND t.expires_at > now()"
            " AND NOT a.disabled",
            (digest,),
        )
        row = await cur.fetchone()
        if row is None or not hmac.compare_digest(bytes(row[9]), digest):
            raise denied
        # Last use is recorded at most once a minute to keep reads cheap.
        await conn.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE token_id = %s"
            " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
            (row[0],),
        )
    return _row_to_token(row[:9])
