"""Grains as auth knows them, and the stored sharing graph of each.

Owns: rows of `grains`, `grants` and `grain_credentials` (share links, grain API tokens).
Trusts: grainmgr's RegisterGrain for owners and roles; the permission engine for decisions.
Never: sees grain contents; stores a share-link or grain-token secret (only SHA-256).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from grainhouse_auth import credentials
from grainhouse_auth.permissions import Grant, Grantee, GrantGraph, Policy
from grainhouse_auth.store import Conn, Row, many, one, run
from grainhouse_proto import common_pb2

CredKind = Literal["share_link", "grain_token"]


@dataclass(frozen=True)
class GrainRecord:
    grain_id: str
    owner_account_id: str
    app_id: str
    title: str
    view_info: common_pb2.ViewInfo

    def policy(self) -> Policy:
        vi = self.view_info
        return Policy(
            owner=self.owner_account_id,
            roles={r.name: frozenset(r.permissions) for r in vi.roles},
            permissions=tuple(p.name for p in vi.permissions),
        )


@dataclass(frozen=True)
class GrantMeta:
    """What the "who has access" page shows beyond the engine's view of a grant."""

    label: str
    created_at: datetime
    grantee_display_name: str


@dataclass(frozen=True)
class Snapshot:
    grain: GrainRecord
    graph: GrantGraph
    meta: dict[str, GrantMeta]


def _grain(row: Row) -> GrainRecord:
    vi = common_pb2.ViewInfo()
    vi.ParseFromString(bytes(row["view_info"]))
    return GrainRecord(row["grain_id"], row["owner_account_id"], row["app_id"], row["title"], vi)


async def register(
    conn: Conn, grain_id: str, owner: str, app_id: str, title: str, view_info: bytes
) -> str | None:
    """Insert or replace; returns the previous owner (None if new)."""
    before = await one(
        conn, "SELECT owner_account_id FROM grains WHERE grain_id = %s FOR UPDATE", (grain_id,)
    )
    await run(
        conn,
        "INSERT INTO grains (grain_id, owner_account_id, app_id, title, view_info)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (grain_id) DO UPDATE SET"
        " owner_account_id = EXCLUDED.owner_account_id, app_id = EXCLUDED.app_id,"
        " title = EXCLUDED.title, view_info = EXCLUDED.view_info, updated_at = now()",
        (grain_id, owner, app_id, title, view_info),
    )
    return None if before is None else str(before["owner_account_id"])


async def forget(conn: Conn, grain_id: str) -> tuple[list[str], list[str]]:
    """Delete a grain with its grants and credentials; returns (grant ids, credential ids)."""
    grants = await many(conn, "SELECT grant_id FROM grants WHERE grain_id = %s", (grain_id,))
    creds = await many(
        conn, "SELECT credential_id FROM grain_credentials WHERE grain_id = %s", (grain_id,)
    )
    await run(conn, "DELETE FROM grains WHERE grain_id = %s", (grain_id,))
    return [r["grant_id"] for r in grants], [r["credential_id"] for r in creds]


async def load(conn: Conn, grain_id: str, now: datetime, lock: bool = False) -> Snapshot | None:
    """The grain and its whole sharing graph; `lock` serialises changes to one grain."""
    row = await one(
        conn,
        "SELECT grain_id, owner_account_id, app_id, title, view_info FROM grains"  # noqa: S608 - constant SQL text; values go in as parameters
        " WHERE grain_id = %s" + (" FOR UPDATE" if lock else ""),
        (grain_id,),
    )
    if row is None:
        return None
    grain = _grain(row)
    rows = await many(
        conn,
        "SELECT g.grant_id, g.grantee_kind, g.grantee_id, g.role, g.granted_by, g.parent_id,"
        " g.label, g.created_at, g.expires_at, coalesce(a.display_name, '') AS name"
        " FROM grants g LEFT JOIN accounts a"
        "   ON g.grantee_kind = 'account' AND a.account_id = g.grantee_id"
        " WHERE g.grain_id = %s ORDER BY g.created_at, g.grant_id",
        (grain_id,),
    )
    grants = [
        Grant(
            r["grant_id"],
            Grantee(r["grantee_kind"], r["grantee_id"]),
            r["role"],
            r["granted_by"],
            r["parent_id"],
            r["expires_at"],
        )
        for r in rows
    ]
    meta = {r["grant_id"]: GrantMeta(r["label"], r["created_at"], r["name"]) for r in rows}
    return Snapshot(grain, GrantGraph.of(grain.policy(), grants, now), meta)


async def insert_grant(
    conn: Conn,
    grain_id: str,
    grantee: Grantee,
    role: str,
    granted_by: str,
    parent_id: str | None,
    label: str = "",
    expires_at: datetime | None = None,
) -> str:
    grant_id = credentials.new_id("grt_")
    await run(
        conn,
        "INSERT INTO grants (grant_id, grain_id, grantee_kind, grantee_id, role, granted_by,"
        " parent_id, label, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            grant_id,
            grain_id,
            grantee.kind,
            grantee.id,
            role,
            granted_by,
            parent_id,
            label,
            expires_at,
        ),
    )
    return grant_id


async def update_grant(conn: Conn, grant_id: str, role: str, label: str | None = None) -> None:
    await run(
        conn,
        "UPDATE grants SET role = %s, label = coalesce(%s, label) WHERE grant_id = %s",
        (role, label, grant_id),
    )


async def delete_grants(conn: Conn, grant_ids: list[str]) -> list[str]:
    """Delete grants; returns the grain credentials (links, tokens) that died with them."""
    if not grant_ids:
        return []
    rows = await many(
        conn,
        "DELETE FROM grants WHERE grant_id = ANY(%s) RETURNING grantee_kind, grantee_id",
        (grant_ids,),
    )
    dead = [r["grantee_id"] for r in rows if r["grantee_kind"] != "account"]
    if dead:
        await run(conn, "DELETE FROM grain_credentials WHERE credential_id = ANY(%s)", (dead,))
    return dead


async def new_credential(conn: Conn, kind: CredKind, grain_id: str) -> tuple[str, str]:
    """A share link or grain API token secret; returns (secret, credential id)."""
    prefix = credentials.SHARE_LINK if kind == "share_link" else credentials.GRAIN_TOKEN
    secret = credentials.new_secret(prefix)
    cred_id = credentials.new_id("lnk_" if kind == "share_link" else "gtk_")
    await run(
        conn,
        "INSERT INTO grain_credentials (credential_id, kind, grain_id, secret_hash, secret_hint)"
        " VALUES (%s, %s, %s, %s, %s)",
        (cred_id, kind, grain_id, credentials.hash_secret(secret), credentials.hint(secret)),
    )
    return secret, cred_id


async def find_credential(conn: Conn, kind: CredKind, secret: str) -> tuple[str, str] | None:
    """(credential id, grain id) behind a secret, or None."""
    prefix = credentials.SHARE_LINK if kind == "share_link" else credentials.GRAIN_TOKEN
    if not credentials.plausible(secret, prefix):
        return None
    digest = credentials.hash_secret(secret)
    row = await one(
        conn,
        "SELECT credential_id, grain_id, secret_hash FROM grain_credentials"
        " WHERE secret_hash = %s AND kind = %s",
        (digest, kind),
    )
    if row is None or not credentials.same(row["secret_hash"], digest):
        return None
    return row["credential_id"], row["grain_id"]


async def touch_credential(conn: Conn, credential_id: str) -> None:
    await run(
        conn,
        "UPDATE grain_credentials SET last_used_at = now() WHERE credential_id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (credential_id,),
    )
