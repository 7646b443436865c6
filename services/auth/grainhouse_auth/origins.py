"""Grain origins: the record behind `ui-<origin id>.<wildcard host>`, shared by every frontend.

Owns: rows of `origins` (auth.proto "Grain origins"): creating them, resolving them (moving the
idle timeout), closing them; and resolving the credential an origin was made from *by its id*
(the secret is not kept) back to a Principal.
Trusts: the caller (rpc_origins.py) to have checked with Authorize's rules that the credential
may open the grain before `create`, and to close an origin whose decision is a refusal.
Never: stores an origin id or a credential secret (only the id's SHA-256 and the credential's
public id), logs either, or decides access itself (sharing.decide does).

Why the credential is kept by id: an origin must end when the session it was opened with logs
out, or the share link or token is revoked. Resolving the id against the same live-row rules as
the secret (sessions: not ended, not idle, not past absolute; API tokens: not revoked, not
expired, account enabled; share links and grain tokens: a live grant) gives exactly the answer
Authorize would give for the secret, without the frontend or this table holding the secret.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from grainhouse_auth import accounts, credentials, grains, principals
from grainhouse_auth.permissions import Grantee
from grainhouse_auth.principals import Principal, PrincipalKind
from grainhouse_auth.store import Conn, one, run
from grainhouse_common.errors import GrainhouseError, Kind

SESSION_TYPES = ("normal", "api")
_ORIGIN_ID = re.compile(r"[0-9a-f]{32}")
_TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
GONE = "this grain origin is unknown or has ended"


@dataclass(frozen=True)
class Origin:
    grain_id: str
    tab_id: str
    session_type: str
    credential_kind: PrincipalKind
    credential_id: str
    idle_seconds: int


def new_origin_id() -> str:
    """128 random bits as 32 lowercase hex characters: valid in a DNS label."""
    return secrets.token_hex(16)


def check_origin_id(origin_id: str) -> str:
    if not _ORIGIN_ID.fullmatch(origin_id):
        raise GrainhouseError(Kind.INVALID, "origin_id: 32 lowercase hex characters")
    return origin_id


def check_tab_id(tab_id: str) -> str:
    if not tab_id:
        return secrets.token_hex(8)
    if not _TAB_ID.fullmatch(tab_id):
        raise GrainhouseError(Kind.INVALID, "tab_id: at most 64 characters of [A-Za-z0-9_-]")
    return tab_id


async def create(
    conn: Conn,
    p: Principal,
    grain_id: str,
    tab_id: str,
    session_type: str,
    idle_seconds: int,
) -> tuple[str, Origin]:
    """Record a new origin for principal `p` on `grain_id`; returns (origin id, record)."""
    if session_type not in SESSION_TYPES:
        raise GrainhouseError(Kind.INVALID, "session_type: normal or api")
    origin_id = new_origin_id()
    await run(
        conn,
        "INSERT INTO origins (origin_hash, grain_id, tab_id, session_type, credential_kind,"
        " credential_id, idle_expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
        (
            credentials.hash_secret(origin_id),
            grain_id,
            tab_id,
            session_type,
            p.kind,
            p.credential_id,
            idle_seconds,
        ),
    )
    return origin_id, Origin(grain_id, tab_id, session_type, p.kind, p.credential_id, idle_seconds)


async def touch(conn: Conn, origin_id: str, idle_seconds: int) -> Origin | None:
    """The live origin behind `origin_id`, its idle timeout moved forward; None if unknown,
    closed or idle past its timeout."""
    if not _ORIGIN_ID.fullmatch(origin_id):
        return None
    row = await one(
        conn,
        "UPDATE origins SET idle_expires_at = now() + make_interval(secs => %s)"
        " WHERE origin_hash = %s AND closed_at IS NULL AND idle_expires_at > now()"
        " RETURNING grain_id, tab_id, session_type, credential_kind, credential_id",
        (idle_seconds, credentials.hash_secret(origin_id)),
    )
    if row is None:
        return None
    return Origin(
        row["grain_id"],
        row["tab_id"],
        row["session_type"],
        row["credential_kind"],
        row["credential_id"],
        idle_seconds,
    )


async def close(conn: Conn, origin_id: str) -> bool:
    """End an origin for good (its decision became a refusal). True if it was open."""
    if not _ORIGIN_ID.fullmatch(origin_id):
        return False
    n = await run(
        conn,
        "UPDATE origins SET closed_at = now() WHERE origin_hash = %s AND closed_at IS NULL",
        (credentials.hash_secret(origin_id),),
    )
    return n == 1


async def was_issued(conn: Conn, origin_id: str) -> bool:
    """True if the id was issued and its row is still kept (closed or idle): not a guess."""
    if not _ORIGIN_ID.fullmatch(origin_id):
        return False
    row = await one(
        conn,
        "SELECT 1 AS found FROM origins WHERE origin_hash = %s",
        (credentials.hash_secret(origin_id),),
    )
    return row is not None


async def principal_of(conn: Conn, kind: PrincipalKind, credential_id: str) -> Principal:
    """The principal behind a credential id, under the same live-row rules as its secret
    (principals.resolve); UNAUTHENTICATED (or AccountDisabledError) otherwise."""
    if kind == "session":
        row = await one(
            conn,
            "SELECT s.account_id, least(s.idle_expires_at, s.absolute_expires_at) AS expires_at"
            " FROM sessions s WHERE s.session_id = %s AND s.ended_at IS NULL"
            " AND s.idle_expires_at > now() AND s.absolute_expires_at > now()",
            (credential_id,),
        )
        if row is None:
            raise principals.denied()
        account = await accounts.get(conn, row["account_id"])
        if account is None:
            raise principals.denied()
        if account.disabled:
            raise principals.AccountDisabledError()
        scope = "admin" if account.is_admin else "write"
        return Principal("session", credential_id, account, scope, expires_at=row["expires_at"])
    if kind == "api_token":
        row = await one(
            conn,
            "SELECT t.account_id, t.scopes, t.expires_at FROM api_tokens t"
            " JOIN accounts a USING (account_id) WHERE t.token_id = %s"
            " AND t.revoked_at IS NULL AND t.expires_at > now() AND NOT a.disabled",
            (credential_id,),
        )
        account = None if row is None else await accounts.get(conn, row["account_id"])
        if row is None or account is None:
            raise principals.denied()
        top = max(row["scopes"], key=lambda s: ("read", "write", "admin").index(s))
        if top == "admin" and not account.is_admin:
            top = "write"  # as principals.from_bearer: the admin power goes with the role
        return Principal("api_token", credential_id, account, top, expires_at=row["expires_at"])
    row = await one(
        conn,
        "SELECT grain_id FROM grain_credentials WHERE credential_id = %s AND kind = %s",
        (credential_id, kind),
    )
    if row is None:
        raise principals.denied()
    snap = await grains.load(conn, row["grain_id"], datetime.now(UTC))
    if snap is None or snap.graph.access_of(Grantee(kind, credential_id)) is None:
        raise principals.denied()
    return Principal(kind, credential_id, None, "", grain_id=row["grain_id"])
