"""Accounts: who someone is, separate from the ways they log in (see `credentials` table).

Owns: rows of `accounts` and their `password` credential.
Trusts: callers have checked the ticket or the caller's right to do this.
Never: returns a password hash or a TOTP seed to a caller outside auth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import psycopg

from grainhouse_auth import credentials, passwords
from grainhouse_auth.store import Conn, Row, many, one, run
from grainhouse_common.errors import GrainhouseError, Kind

_HANDLE = re.compile(r"^[a-z0-9_]{1,32}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")

SELECT = """
SELECT a.account_id, coalesce(a.email, '') AS email, a.display_name, a.preferred_handle,
       a.is_admin, a.disabled, a.created_at, a.last_login_at, a.app_user_id, a.is_dev,
       a.is_visitor,
       EXISTS (SELECT 1 FROM credentials c
               WHERE c.account_id = a.account_id AND c.kind = 'password') AS has_password,
       EXISTS (SELECT 1 FROM credentials c
               WHERE c.account_id = a.account_id AND c.kind = 'totp') AS totp_enabled
FROM accounts a
"""


class EmailTakenError(GrainhouseError):
    """An account already has this email (the edge answers ALREADY_EXISTS)."""

    def __init__(self) -> None:
        super().__init__(Kind.CONFLICT, "an account with this email already exists")


@dataclass(frozen=True)
class Account:
    account_id: str
    email: str
    display_name: str
    preferred_handle: str
    is_admin: bool
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None
    app_user_id: str
    is_dev: bool
    has_password: bool
    totp_enabled: bool
    is_visitor: bool = False

    @property
    def can_create_grains(self) -> bool:
        """Auth's one answer to "may this account create grains" (auth.proto Account)."""
        return not self.is_visitor and not self.disabled


def _from(row: Row) -> Account:
    return Account(**row)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str) -> str:
    email = normalise_email(email)
    if not _EMAIL.match(email):
        raise GrainhouseError(Kind.INVALID, "email: not an email address")
    return email


def check_details(email: str, display_name: str, handle: str) -> tuple[str, str, str]:
    name = display_name.strip()
    if not 1 <= len(name) <= 100:
        raise GrainhouseError(Kind.INVALID, "display_name: 1 to 100 characters")
    if handle and not _HANDLE.match(handle):
        raise GrainhouseError(Kind.INVALID, "preferred_handle: [a-z0-9_]{1,32}")
    return check_email(email), name, handle


async def get(conn: Conn, account_id: str) -> Account | None:
    row = await one(conn, SELECT + " WHERE a.account_id = %s", (account_id,))
    return None if row is None else _from(row)


async def by_email(conn: Conn, email: str) -> Account | None:
    row = await one(conn, SELECT + " WHERE a.email = %s", (normalise_email(email),))
    return None if row is None else _from(row)


async def create(
    conn: Conn,
    *,
    email: str | None,
    display_name: str,
    handle: str = "",
    is_admin: bool = False,
    is_dev: bool = False,
    is_visitor: bool = False,
    password_hash: str | None = None,
) -> Account:
    account_id = credentials.new_id("acc_")
    try:
        async with conn.transaction():
            await run(
                conn,
                "INSERT INTO accounts (account_id, email, display_name, preferred_handle,"
                " is_admin, is_dev, is_visitor) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (account_id, email, display_name, handle, is_admin, is_dev, is_visitor),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise EmailTakenError() from exc
    if password_hash is not None:
        await set_password_hash(conn, account_id, password_hash)
    found = await get(conn, account_id)
    assert found is not None
    return found


async def password_hash(conn: Conn, account_id: str) -> str | None:
    row = await one(
        conn,
        "SELECT secret FROM credentials WHERE account_id = %s AND kind = 'password'",
        (account_id,),
    )
    return None if row is None else str(row["secret"])


async def set_password_hash(conn: Conn, account_id: str, hashed: str | None) -> None:
    if hashed is None:
        await run(
            conn,
            "DELETE FROM credentials WHERE account_id = %s AND kind = 'password'",
            (account_id,),
        )
        return
    await run(
        conn,
        "INSERT INTO credentials (account_id, kind, secret) VALUES (%s, 'password', %s)"
        " ON CONFLICT (account_id, kind) DO UPDATE SET secret = EXCLUDED.secret,"
        " created_at = now()",
        (account_id, hashed),
    )


async def verify_password(conn: Conn, account: Account | None, password: str) -> bool:
    stored = None if account is None else await password_hash(conn, account.account_id)
    ok = passwords.verify(stored, password)
    if ok and stored is not None and passwords.needs_rehash(stored):
        assert account is not None
        await set_password_hash(conn, account.account_id, passwords.hash_password(password))
    return ok


async def mark_login(conn: Conn, account_id: str) -> None:
    await run(
        conn, "UPDATE accounts SET last_login_at = now() WHERE account_id = %s", (account_id,)
    )


async def make_admin(conn: Conn, account_id: str) -> None:
    await run(
        conn,
        "UPDATE accounts SET is_admin = true, is_visitor = false WHERE account_id = %s",
        (account_id,),
    )


async def set_visitor(conn: Conn, account_id: str, is_visitor: bool) -> bool:
    """Make an account a visitor or a full user; False if the account does not exist."""
    changed = await run(
        conn,
        "UPDATE accounts SET is_visitor = %s WHERE account_id = %s",
        (is_visitor, account_id),
    )
    return changed > 0


async def find_dev(conn: Conn, display_name: str) -> Account | None:
    row = await one(
        conn,
        SELECT + " WHERE a.is_dev AND a.display_name = %s ORDER BY a.created_at LIMIT 1",
        (display_name,),
    )
    return None if row is None else _from(row)


async def set_admin(conn: Conn, account_id: str, is_admin: bool) -> None:
    # An admin is never a visitor: promotion to admin makes a full user as well.
    await run(
        conn,
        "UPDATE accounts SET is_admin = %s, is_visitor = is_visitor AND NOT %s"
        " WHERE account_id = %s",
        (is_admin, is_admin, account_id),
    )


async def page(
    conn: Conn, query: str, after: str, limit: int, account_id: str = ""
) -> list[Account]:
    """Accounts oldest first, after the cursor `after` ("<created_at iso>|<id>"); only the
    account `account_id` when it is given."""
    like = f"%{query.lower()}%"
    cursor_ts, _, cursor_id = after.partition("|")
    rows = await many(
        conn,
        SELECT + " WHERE (%s = '' OR lower(coalesce(a.email, '')) LIKE %s"
        " OR lower(a.display_name) LIKE %s)"
        " AND (%s = '' OR a.account_id = %s)"
        " AND (%s = '' OR (a.created_at, a.account_id) > (%s::timestamptz, %s))"
        " ORDER BY a.created_at, a.account_id LIMIT %s",
        (query, like, like, account_id, account_id, cursor_ts, cursor_ts or None, cursor_id, limit),
    )
    return [_from(r) for r in rows]
