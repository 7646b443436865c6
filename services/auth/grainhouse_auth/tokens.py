"""Personal API tokens: issue, authenticate, list, revoke.

Owns: rows of `auth.api_tokens` and the built-in operator account row.
Trusts: the database; callers have already decided the caller may do this.
Never: stores, logs or returns a secret after creation (only its SHA-256 and a hint).

A token secret is `ghp_` + 256 random bits (base64url). Being high-entropy, a plain
SHA-256 is the right stored form (argon2 is for low-entropy passwords); lookup is by hash,
then a constant-time comparison guards against any index-timing side channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from grainhouse_auth import credentials
from grainhouse_auth.store import Conn, Row, many, one
from grainhouse_common.errors import GrainhouseError, Kind

PREFIX = credentials.API_TOKEN
OPERATOR_ACCOUNT = "operator"
SCOPES = ("read", "write", "admin")
_COLUMNS = (
    "t.token_id, t.account_id, t.name, t.scopes, t.created_at, t.expires_at, t.last_used_at,"
    " t.secret_hint"
)


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
    return credentials.hash_secret(secret)


def _from(row: Row) -> Token:
    return Token(
        token_id=row["token_id"],
        account_id=row["account_id"],
        name=row["name"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        secret_hint=row["secret_hint"],
        is_admin_account=bool(row.get("is_admin", False)),
    )


async def ensure_operator_account(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO accounts (account_id, email, display_name, is_admin)"
            " VALUES (%s, NULL, 'Operator', true) ON CONFLICT (account_id) DO NOTHING",
            (OPERATOR_ACCOUNT,),
        )


async def issue(
    conn: Conn,
    account_id: str,
    name: str,
    scopes: tuple[str, ...],
    ttl_seconds: int,
    not_after: datetime | None = None,
) -> tuple[str, Token]:
    """Create a token; returns (secret, metadata). The secret is never seen again."""
    if not 1 <= len(name) <= 100:
        raise GrainhouseError(Kind.INVALID, "name: must be 1 to 100 characters")
    if not scopes or any(s not in SCOPES for s in scopes):
        raise GrainhouseError(Kind.INVALID, "scopes: at least one of read, write, admin")
    secret = credentials.new_secret(PREFIX)
    expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    if not_after is not None and expires > not_after:
        raise GrainhouseError(
            Kind.PERMISSION, "ttl_seconds: a token cannot outlive the token that makes it"
        )
    try:
        row = await one(
            conn,
            "INSERT INTO api_tokens AS t (token_id, account_id, name, secret_hash, secret_hint,"  # noqa: S608 - constant SQL text; values go in as parameters
            " scopes, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING " + _COLUMNS,
            (
                credentials.new_id("tok_"),
                account_id,
                name,
                credentials.hash_secret(secret),
                credentials.hint(secret),
                sorted(set(scopes), key=SCOPES.index),
                expires,
            ),
        )
    except psycopg.errors.ForeignKeyViolation as exc:
        raise GrainhouseError(Kind.NOT_FOUND, "account not found") from exc
    assert row is not None
    return secret, _from(row)


async def authenticate(conn: Conn, secret: str) -> Token:
    """The live token behind `secret`, or UNAUTHENTICATED (same answer for every failure)."""
    denied = GrainhouseError(Kind.UNAUTHENTICATED, "invalid or expired token")
    if not credentials.plausible(secret, PREFIX):
        raise denied
    digest = credentials.hash_secret(secret)
    row = await one(
        conn,
        "SELECT " + _COLUMNS + ", a.is_admin, t.secret_hash"  # noqa: S608 - constant SQL text; values go in as parameters
        " FROM api_tokens t JOIN accounts a USING (account_id)"
        " WHERE t.secret_hash = %s AND t.revoked_at IS NULL AND t.expires_at > now()"
        " AND NOT a.disabled",
        (digest,),
    )
    if row is None or not credentials.same(row["secret_hash"], digest):
        raise denied
    # Last use is recorded at most once a minute to keep reads cheap.
    await conn.execute(
        "UPDATE api_tokens SET last_used_at = now() WHERE token_id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (row["token_id"],),
    )
    return _from(row)


async def live_of(conn: Conn, account_id: str, after: str, limit: int) -> list[Token]:
    """Live tokens newest first, after the cursor ("<created_at iso>|<id>")."""
    ts, _, tid = after.partition("|")
    rows = await many(
        conn,
        "SELECT " + _COLUMNS + " FROM api_tokens t WHERE t.account_id = %s"  # noqa: S608 - constant SQL text; values go in as parameters
        " AND t.revoked_at IS NULL AND t.expires_at > now()"
        " AND (%s = '' OR (t.created_at, t.token_id) < (%s::timestamptz, %s))"
        " ORDER BY t.created_at DESC, t.token_id DESC LIMIT %s",
        (account_id, ts, ts or None, tid, limit),
    )
    return [_from(r) for r in rows]


async def owner_of(conn: Conn, token_id: str) -> str | None:
    row = await one(conn, "SELECT account_id FROM api_tokens WHERE token_id = %s", (token_id,))
    return None if row is None else str(row["account_id"])


async def revoke(conn: Conn, token_id: str) -> bool:
    """True if the token was live and is now revoked."""
    cur = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = %s AND revoked_at IS NULL",
        (token_id,),
    )
    return cur.rowcount == 1
