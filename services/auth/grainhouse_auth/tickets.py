"""One-time tickets: setup links, invitations, email login codes, TOTP challenges, OIDC states.

Owns: rows of `tickets`.
Trusts: callers to check what a ticket allows once it is consumed.
Never: stores a ticket secret (only its SHA-256); never lets a ticket be used twice (consuming
is one conditional UPDATE, so two racing redemptions cannot both win).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from grainhouse_auth import credentials
from grainhouse_auth.store import Conn, Row, one

TicketKind = Literal["setup", "invitation", "email", "challenge", "oidc_state"]
_COLUMNS = (
    "ticket_id, kind, account_id, email, grants_admin, created_by, data, attempts,"
    " created_at, expires_at"
)


@dataclass(frozen=True)
class Ticket:
    ticket_id: str
    kind: str
    account_id: str | None
    email: str
    grants_admin: bool
    created_by: str
    data: dict[str, Any]
    attempts: int
    created_at: datetime
    expires_at: datetime


def _from(row: Row) -> Ticket:
    return Ticket(**{k: row[k] for k in Ticket.__dataclass_fields__})


async def issue(
    conn: Conn,
    kind: TicketKind,
    ttl_seconds: int,
    *,
    account_id: str | None = None,
    email: str = "",
    grants_admin: bool = False,
    created_by: str = "",
    data: dict[str, Any] | None = None,
) -> tuple[str, Ticket]:
    secret = credentials.new_secret(credentials.TICKET)
    row = await one(
        conn,
        "INSERT INTO tickets (ticket_id, kind, secret_hash, account_id, email, grants_admin,"  # noqa: S608 - constant SQL text; values go in as parameters
        " created_by, data, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING " + _COLUMNS,
        (
            credentials.new_id("tkt_"),
            kind,
            credentials.hash_secret(secret),
            account_id,
            email,
            grants_admin,
            created_by,
            json.dumps(data or {}),
            datetime.now(UTC) + timedelta(seconds=ttl_seconds),
        ),
    )
    assert row is not None
    return secret, _from(row)


async def consume(conn: Conn, kind: TicketKind, secret: str) -> Ticket | None:
    """Use a live ticket up; None if it is unknown, used, expired or of another kind."""
    if not credentials.plausible(secret, credentials.TICKET):
        return None
    row = await one(
        conn,
        "UPDATE tickets SET used_at = now() WHERE secret_hash = %s AND kind = %s"  # noqa: S608 - constant SQL text; values go in as parameters
        " AND used_at IS NULL AND expires_at > now() RETURNING " + _COLUMNS,
        (credentials.hash_secret(secret), kind),
    )
    return None if row is None else _from(row)


async def peek(conn: Conn, kind: TicketKind, secret: str) -> Ticket | None:
    """A live ticket without using it up (TOTP challenges are tried several times)."""
    if not credentials.plausible(secret, credentials.TICKET):
        return None
    row = await one(
        conn,
        "SELECT " + _COLUMNS + " FROM tickets WHERE secret_hash = %s AND kind = %s"  # noqa: S608 - constant SQL text; values go in as parameters
        " AND used_at IS NULL AND expires_at > now()",
        (credentials.hash_secret(secret), kind),
    )
    return None if row is None else _from(row)


async def fail_attempt(conn: Conn, ticket_id: str, max_attempts: int) -> bool:
    """Count a wrong answer; True if that was the last one allowed (the ticket is now gone)."""
    row = await one(
        conn,
        "UPDATE tickets SET attempts = attempts + 1,"
        " used_at = CASE WHEN attempts + 1 >= %s THEN now() ELSE used_at END"
        " WHERE ticket_id = %s RETURNING attempts",
        (max_attempts, ticket_id),
    )
    return row is None or row["attempts"] >= max_attempts


async def finish(conn: Conn, ticket_id: str) -> bool:
    """Use up a peeked ticket; False if someone else used it first."""
    cur = await conn.execute(
        "UPDATE tickets SET used_at = now() WHERE ticket_id = %s AND used_at IS NULL"
        " AND expires_at > now()",
        (ticket_id,),
    )
    return cur.rowcount == 1


async def consume_by_id(conn: Conn, kind: TicketKind, ticket_id: str) -> Ticket | None:
    """Use up a live ticket known by id (its secret was checked earlier in the same flow)."""
    row = await one(
        conn,
        "UPDATE tickets SET used_at = now() WHERE ticket_id = %s AND kind = %s"  # noqa: S608 - constant SQL text; values go in as parameters
        " AND used_at IS NULL AND expires_at > now() RETURNING " + _COLUMNS,
        (ticket_id, kind),
    )
    return None if row is None else _from(row)
