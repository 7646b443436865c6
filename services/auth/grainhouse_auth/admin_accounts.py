"""Admin work on accounts and invitations, and the "shared with me" list of an account.

Owns: disabling and enabling accounts (with the revocation of every session and API token of a
disabled account), the listing and revocation of invitations (rows of `tickets` of kind
'invitation'), and the read-only list of grains an account holds live grants on.
Trusts: the servicer to have checked that the caller is an admin (or, for the shared list, an
account principal); the permission engine for which grants are live.
Never: returns a ticket, session or token secret; deletes an account's grains or grants (a
disabled account keeps them; its credentials fail instead); disables the built-in operator
account, the caller's own account, or the last enabled admin (nobody could undo it by UI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg_pool import AsyncConnectionPool

from grainhouse_auth import accounts, grains, tokens
from grainhouse_auth.accounts import Account
from grainhouse_auth.events import Events
from grainhouse_auth.permissions import Grantee
from grainhouse_auth.store import Conn, many, one
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.timestamps import timestamp
from grainhouse_proto import auth_pb2


@dataclass(frozen=True)
class DisableOutcome:
    account: Account
    sessions_ended: int
    tokens_revoked: int


@dataclass(frozen=True)
class InvitationRow:
    invitation_id: str
    email: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    grants_admin: bool
    used_at: datetime | None


@dataclass(frozen=True)
class SharedGrain:
    grain_id: str
    role: str
    grant_id: str
    title: str
    owner_account_id: str
    owner_display_name: str
    shared_at: datetime
    cursor_at: datetime  # newest grant of the account on this grain: the paging key


async def set_disabled(
    pool: AsyncConnectionPool, events: Events, caller_id: str, account_id: str, disabled: bool
) -> DisableOutcome:
    """Disable (revoking sessions and API tokens) or enable an account; idempotent."""
    if not account_id:
        raise GrainhouseError(Kind.INVALID, "account_id: required")
    if account_id == tokens.OPERATOR_ACCOUNT:
        raise GrainhouseError(Kind.CONFLICT, "the built-in operator account cannot be changed")
    if disabled and account_id == caller_id:
        raise GrainhouseError(Kind.CONFLICT, "an admin cannot disable their own account")
    async with pool.connection() as conn, conn.transaction():
        # Serialise admin changes: two admins disabling each other at once must not leave none.
        await conn.execute("LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE")
        target = await accounts.get(conn, account_id)
        if target is None:
            raise GrainhouseError(Kind.NOT_FOUND, "account not found")
        if target.disabled == disabled:
            return DisableOutcome(target, 0, 0)
        if disabled and target.is_admin and await _other_enabled_admins(conn, account_id) == 0:
            raise GrainhouseError(Kind.CONFLICT, "the last enabled admin cannot be disabled")
        await conn.execute(
            "UPDATE accounts SET disabled = %s WHERE account_id = %s", (disabled, account_id)
        )
        sessions_ended: list[str] = []
        tokens_revoked: list[str] = []
        if disabled:
            rows = await many(
                conn,
                "UPDATE sessions SET ended_at = now() WHERE account_id = %s"
                " AND ended_at IS NULL RETURNING session_id",
                (account_id,),
            )
            sessions_ended = [r["session_id"] for r in rows]
            rows = await many(
                conn,
                "UPDATE api_tokens SET revoked_at = now() WHERE account_id = %s"
                " AND revoked_at IS NULL RETURNING token_id",
                (account_id,),
            )
            tokens_revoked = [r["token_id"] for r in rows]
        after = await accounts.get(conn, account_id)
        assert after is not None
    if disabled:
        # Published after the commit (a cache that re-asks must see the change) and before the
        # answer (auth.proto: revocations reach caches before the RPC that caused them returns).
        await events.revoked(credential_ids=sessions_ended + tokens_revoked, account_id=account_id)
    await events.audit(
        "account_disabled" if disabled else "account_enabled",
        account_id=account_id,
        by=caller_id,
        sessions_ended=len(sessions_ended),
        tokens_revoked=len(tokens_revoked),
    )
    return DisableOutcome(after, len(sessions_ended), len(tokens_revoked))


async def _other_enabled_admins(conn: Conn, account_id: str) -> int:
    row = await one(
        conn,
        "SELECT count(*) AS n FROM accounts WHERE is_admin AND NOT disabled"
        " AND account_id <> %s AND account_id <> %s",
        (account_id, tokens.OPERATOR_ACCOUNT),
    )
    assert row is not None
    return int(row["n"])


# -- invitations ------------------------------------------------------------------------------

_REVOKED = "revoked"  # key in tickets.data that marks a revoked invitation


async def list_invitations(
    conn: Conn, include_closed: bool, after: str, limit: int
) -> list[InvitationRow]:
    """Invitations newest first, after the cursor ("<created_at iso>|<id>"); never revoked."""
    ts, _, tid = after.partition("|")
    rows = await many(
        conn,
        "SELECT ticket_id, email, created_by, created_at, expires_at, grants_admin, used_at"
        " FROM tickets WHERE kind = 'invitation' AND NOT (data ? %s)"
        " AND (%s OR (used_at IS NULL AND expires_at > now()))"
        " AND (%s = '' OR (created_at, ticket_id) < (%s::timestamptz, %s))"
        " ORDER BY created_at DESC, ticket_id DESC LIMIT %s",
        (_REVOKED, include_closed, ts, ts or None, tid, limit),
    )
    return [
        InvitationRow(
            r["ticket_id"], r["email"], r["created_by"], r["created_at"], r["expires_at"],
            r["grants_admin"], r["used_at"],
        )
        for r in rows
    ]  # fmt: skip


async def revoke_invitation(conn: Conn, invitation_id: str) -> bool:
    """Make an invitation unusable; False if no such invitation. Idempotent."""
    if not invitation_id:
        raise GrainhouseError(Kind.INVALID, "invitation_id: required")
    row = await one(
        conn,
        "UPDATE tickets SET data = data || jsonb_build_object(%s::text, true),"
        " expires_at = least(expires_at, now())"
        " WHERE ticket_id = %s AND kind = 'invitation' RETURNING ticket_id",
        (_REVOKED, invitation_id),
    )
    return row is not None


# -- shared with me ---------------------------------------------------------------------------

# Grains of the account's direct grants (redeemed links hang below the link's grant as account
# grants, so they are covered), newest grant first.
_CANDIDATES = """
SELECT g.grain_id, max(g.created_at) AS at
FROM grants g JOIN grains gr USING (grain_id)
WHERE g.grantee_kind = 'account' AND g.grantee_id = %s AND gr.owner_account_id <> %s
GROUP BY g.grain_id
HAVING (%s = '' OR (max(g.created_at), g.grain_id) < (%s::timestamptz, %s))
ORDER BY at DESC, g.grain_id DESC
LIMIT %s
"""


async def shared_with(conn: Conn, account_id: str, after: str, limit: int) -> list[SharedGrain]:
    """Up to `limit` grains the account holds *live* access to without owning them.

    Dead grants (expired, or cut off by a revoked or narrowed ancestor) are skipped, so a page
    can be read past them; the cursor is the newest grant time and grain id of the last item.
    """
    ts, _, gid = after.partition("|")
    found: list[SharedGrain] = []
    now = datetime.now(UTC)
    while len(found) < limit:
        batch = await many(
            conn, _CANDIDATES, (account_id, account_id, ts, ts or None, gid, limit * 2)
        )
        for row in batch:
            ts, gid = row["at"].isoformat(), row["grain_id"]
            snap = await grains.load(conn, row["grain_id"], now)
            access = None if snap is None else snap.graph.access_of(Grantee("account", account_id))
            if snap is None or access is None or access.is_owner or access.via is None:
                continue
            meta = snap.meta.get(access.via)
            owner = await accounts.get(conn, snap.grain.owner_account_id)
            found.append(
                SharedGrain(
                    grain_id=snap.grain.grain_id,
                    role=access.role,
                    grant_id=access.via,
                    title=snap.grain.title,
                    owner_account_id=snap.grain.owner_account_id,
                    owner_display_name="" if owner is None else owner.display_name,
                    shared_at=row["at"] if meta is None else meta.created_at,
                    cursor_at=row["at"],
                )
            )
            if len(found) == limit:
                break
        if len(batch) < limit * 2:
            break
    return found


# -- messages ---------------------------------------------------------------------------------


def invitation_pb(i: InvitationRow) -> auth_pb2.Invitation:
    msg = auth_pb2.Invitation(
        invitation_id=i.invitation_id,
        email=i.email,
        created_by=i.created_by,
        grants_admin=i.grants_admin,
        created_at=timestamp(i.created_at),
        expires_at=timestamp(i.expires_at),
    )
    if i.used_at is not None:
        msg.used_at.CopyFrom(timestamp(i.used_at))
    return msg


def shared_pb(g: SharedGrain) -> auth_pb2.SharedGrain:
    return auth_pb2.SharedGrain(
        grain_id=g.grain_id,
        role=g.role,
        grant_id=g.grant_id,
        title=g.title,
        owner_account_id=g.owner_account_id,
        owner_display_name=g.owner_display_name,
        shared_at=timestamp(g.shared_at),
    )
