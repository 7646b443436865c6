"""Browser sessions: server-side, revocable, with idle and absolute timeouts.

Owns: rows of `sessions`.
Trusts: callers decide *whether* someone may log in; this module only records it.
Never: stores the session secret (only its SHA-256) or returns it after creation.

A login always makes a new session (new id, new secret); so does any privilege change
(`rotate`), so a secret planted before a login or a promotion is worth nothing after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from grainhouse_auth import credentials
from grainhouse_auth.store import Conn, Row, many, one
from grainhouse_common.errors import GrainhouseError, Kind

_COLUMNS = (
    "session_id, account_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at,"
    " login_method, user_agent, remote_addr"
)
DENIED = "session unknown, ended or expired: log in again"


@dataclass(frozen=True)
class Timeouts:
    idle_seconds: int
    absolute_seconds: int


@dataclass(frozen=True)
class Session:
    session_id: str
    account_id: str
    created_at: datetime
    last_seen_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    login_method: str
    user_agent: str
    remote_addr: str


def _from(row: Row) -> Session:
    return Session(**{k: row[k] for k in Session.__dataclass_fields__})


async def create(
    conn: Conn,
    account_id: str,
    method: str,
    timeouts: Timeouts,
    user_agent: str = "",
    remote_addr: str = "",
) -> tuple[str, Session]:
    secret = credentials.new_secret(credentials.SESSION)
    now = datetime.now(UTC)
    absolute = now + timedelta(seconds=timeouts.absolute_seconds)
    idle = min(now + timedelta(seconds=timeouts.idle_seconds), absolute)
    row = await one(
        conn,
        "INSERT INTO sessions (session_id, account_id, secret_hash, created_at, last_seen_at,"  # noqa: S608 - constant SQL text; values go in as parameters
        " idle_expires_at, absolute_expires_at, login_method, user_agent, remote_addr)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING " + _COLUMNS,
        (
            credentials.new_id("ses_"),
            account_id,
            credentials.hash_secret(secret),
            now,
            now,
            idle,
            absolute,
            method,
            user_agent[:256],
            remote_addr[:64],
        ),
    )
    assert row is not None
    return secret, _from(row)


async def resolve(conn: Conn, secret: str, touch: bool, timeouts: Timeouts) -> Session:
    """The live session behind a cookie, its idle timeout moved if `touch`; else UNAUTHENTICATED."""
    denied = GrainhouseError(Kind.UNAUTHENTICATED, DENIED)
    if not credentials.plausible(secret, credentials.SESSION):
        raise denied
    digest = credentials.hash_secret(secret)
    row = await one(
        conn,
        "SELECT secret_hash, " + _COLUMNS + " FROM sessions WHERE secret_hash = %s"  # noqa: S608 - constant SQL text; values go in as parameters
        " AND ended_at IS NULL AND idle_expires_at > now() AND absolute_expires_at > now()",
        (digest,),
    )
    if row is None or not credentials.same(row["secret_hash"], digest):
        raise denied
    if touch:
        row = await one(
            conn,
            "UPDATE sessions SET last_seen_at = now(),"  # noqa: S608 - constant SQL text; values go in as parameters
            " idle_expires_at = least(now() + make_interval(secs => %s), absolute_expires_at)"
            " WHERE session_id = %s RETURNING " + _COLUMNS,
            (timeouts.idle_seconds, row["session_id"]),
        )
        assert row is not None
    return _from(row)


async def end(conn: Conn, secret: str) -> Session | None:
    if not credentials.plausible(secret, credentials.SESSION):
        return None
    row = await one(
        conn,
        "UPDATE sessions SET ended_at = now() WHERE secret_hash = %s AND ended_at IS NULL"  # noqa: S608 - constant SQL text; values go in as parameters
        " RETURNING " + _COLUMNS,
        (credentials.hash_secret(secret),),
    )
    return None if row is None else _from(row)


async def end_by_id(conn: Conn, session_id: str) -> None:
    await conn.execute(
        "UPDATE sessions SET ended_at = now() WHERE session_id = %s AND ended_at IS NULL",
        (session_id,),
    )


async def end_others(conn: Conn, account_id: str, keep: str | None) -> list[str]:
    """End every live session of an account but `keep`; returns the ids ended."""
    rows = await many(
        conn,
        "UPDATE sessions SET ended_at = now() WHERE account_id = %s AND ended_at IS NULL"
        " AND session_id IS DISTINCT FROM %s RETURNING session_id",
        (account_id, keep),
    )
    return [r["session_id"] for r in rows]


async def rotate(conn: Conn, old: Session, method: str, timeouts: Timeouts) -> tuple[str, Session]:
    """End `old` and open a fresh session for the same account (after a privilege change)."""
    await end_by_id(conn, old.session_id)
    return await create(conn, old.account_id, method, timeouts, old.user_agent, old.remote_addr)
