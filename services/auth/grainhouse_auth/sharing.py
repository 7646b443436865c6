"""Sharing and the access decision: grains, grants, share links, grain tokens, Authorize.

Owns: the sharing flows (who may share what, the cascade on revoke, the events they cause).
Trusts: the permission engine for every rule; grains.py for storage; principals for callers.
Never: decides anything the engine did not; answers a revocation before its event is out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from grainhouse_auth import accounts, grains
from grainhouse_auth.events import Events
from grainhouse_auth.permissions import (
    Access,
    ExceedsOwnAccessError,
    Grant,
    Grantee,
    NoAccessError,
    RoleUnknownError,
)
from grainhouse_auth.principals import Principal
from grainhouse_auth.store import Conn
from grainhouse_common.errors import GrainhouseError, Kind

NOT_VISIBLE = "grain not found"


@dataclass(frozen=True)
class GrantView:
    grain_id: str
    grant: Grant
    meta: grains.GrantMeta | None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    deny_reason: str = ""  # "unauthenticated" | "no_access" | "unknown_grain" | "wrong_grain" ...
    access: Access | None = None
    permissions: tuple[str, ...] = ()
    owner_account_id: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


def _view(snap: grains.Snapshot, grant_id: str) -> GrantView:
    return GrantView(snap.grain.grain_id, snap.graph.grants[grant_id], snap.meta.get(grant_id))


def _need_sharer(p: Principal) -> str:
    """Only account principals with WRITE share (sessions, or API tokens with WRITE)."""
    if p.account is None:
        raise GrainhouseError(Kind.PERMISSION, "only an account can share")
    if not p.has_scope("write"):
        raise GrainhouseError(Kind.PERMISSION, "this token lacks the write scope")
    return p.account.account_id


class Sharing:
    def __init__(
        self, pool: AsyncConnectionPool, events: Events, max_ttl: int, cache_seconds: int
    ) -> None:
        self.pool = pool
        self.events = events
        self.max_ttl = max_ttl
        self.cache_seconds = cache_seconds

    def _expiry(self, ttl: int) -> datetime | None:
        if ttl == 0:
            return None
        if ttl > self.max_ttl:
            raise GrainhouseError(Kind.INVALID, f"ttl_seconds: at most {self.max_ttl}")
        return _now() + timedelta(seconds=ttl)

    async def _locked(self, conn: Conn, grain_id: str) -> grains.Snapshot:
        if not grain_id:
            raise GrainhouseError(Kind.INVALID, "grain_id: required")
        snap = await grains.load(conn, grain_id, _now(), lock=True)
        if snap is None:
            raise GrainhouseError(Kind.NOT_FOUND, NOT_VISIBLE)
        return snap

    # -- grains --

    async def register(
        self, grain_id: str, owner: str, app_id: str, title: str, view_info: bytes
    ) -> None:
        if not grain_id or not owner:
            raise GrainhouseError(Kind.INVALID, "grain_id and owner_account_id are required")
        async with self.pool.connection() as conn, conn.transaction():
            if await accounts.get(conn, owner) is None:
                raise GrainhouseError(Kind.NOT_FOUND, "owner account not found")
            before = await grains.load(conn, grain_id, _now(), lock=True)
            await grains.register(conn, grain_id, owner, app_id, title, view_info)
            after = await grains.load(conn, grain_id, _now())
            assert after is not None
        if before is not None:
            # An upgrade or an ownership move may take access away: say which grants changed.
            lost = [
                gid
                for gid in before.graph.grants
                if (was := before.graph.effective(gid)) is not None
                and not was <= (after.graph.effective(gid) or frozenset())
            ]
            old_owner = before.grain.owner_account_id
            if lost or old_owner != owner:
                await self.events.revoked(grain_id=grain_id, grant_ids=lost)
        await self.events.audit("grain_registered", grain_id=grain_id, owner_account_id=owner)

    async def forget(self, grain_id: str) -> None:
        if not grain_id:
            raise GrainhouseError(Kind.INVALID, "grain_id: required")
        async with self.pool.connection() as conn, conn.transaction():
            grant_ids, cred_ids = await grains.forget(conn, grain_id)
        await self.events.revoked(grain_id=grain_id, grant_ids=grant_ids, credential_ids=cred_ids)
        await self.events.audit("grain_forgotten", grain_id=grain_id)

    # -- making grants --

    async def _grant(
        self,
        conn: Conn,
        caller: Principal,
        grain_id: str,
        role: str,
        grantee: Grantee | None,
        label: str,
        expires_at: datetime | None,
    ) -> tuple[grains.Snapshot, str | None]:
        """Check the caller may share `role`; returns (snapshot, parent grant id)."""
        who = _need_sharer(caller)
        snap = await self._locked(conn, grain_id)
        try:
            parent = snap.graph.parent_for(who, role)
        except NoAccessError:
            raise GrainhouseError(Kind.NOT_FOUND, NOT_VISIBLE) from None
        except RoleUnknownError:
            raise GrainhouseError(
                Kind.INVALID, f"role: {role!r} is not a role of this app"
            ) from None
        except ExceedsOwnAccessError:
            raise GrainhouseError(Kind.PERMISSION, "role exceeds your own permissions") from None
        return snap, parent

    async def grant_account(
        self, caller: Principal, grain_id: str, account_id: str, role: str, label: str
    ) -> GrantView:
        async with self.pool.connection() as conn, conn.transaction():
            snap, parent = await self._grant(conn, caller, grain_id, role, None, label, None)
            target = await accounts.get(conn, account_id) if account_id else None
            if target is None or target.disabled:
                raise GrainhouseError(Kind.NOT_FOUND, "account not found")
            who = caller.account_id
            existing = [
                g
                for g in snap.graph.grants.values()
                if g.grantee == Grantee("account", account_id)
                and g.parent_id == parent
                and g.granted_by == who
            ]
            narrowed: list[str] = []
            if existing:
                gid = existing[0].grant_id
                if snap.graph.check_role_change(who, gid, role):
                    narrowed = snap.graph.subtree(gid)
                await grains.update_grant(conn, gid, role, label or None)
            else:
                gid = await grains.insert_grant(
                    conn, grain_id, Grantee("account", account_id), role, who, parent, label
                )
            after = await grains.load(conn, grain_id, _now())
            assert after is not None
        if narrowed:
            await self.events.revoked(grain_id=grain_id, grant_ids=narrowed)
        await self.events.audit(
            "share", grain_id=grain_id, grant_id=gid, by=who, to_account=account_id, role=role
        )
        return _view(after, gid)

    async def _credential_grant(
        self,
        caller: Principal,
        grain_id: str,
        role: str,
        label: str,
        ttl: int,
        kind: grains.CredKind,
    ) -> tuple[str, str, grains.Snapshot]:
        """A grant held by a new bearer credential (share link or grain API token), chained
        under the caller's own access; returns (secret, grant id, the grain's state after)."""
        expires = self._expiry(ttl)
        async with self.pool.connection() as conn, conn.transaction():
            _, parent = await self._grant(conn, caller, grain_id, role, None, label, expires)
            secret, cred_id = await grains.new_credential(conn, kind, grain_id)
            gid = await grains.insert_grant(
                conn,
                grain_id,
                Grantee(kind, cred_id),
                role,
                caller.account_id,
                parent,
                label,
                expires,
            )
            after = await grains.load(conn, grain_id, _now())
            assert after is not None
        return secret, gid, after

    async def share_link(
        self, caller: Principal, grain_id: str, role: str, label: str, ttl: int
    ) -> tuple[str, GrantView]:
        secret, gid, after = await self._credential_grant(
            caller, grain_id, role, label, ttl, "share_link"
        )
        await self.events.audit(
            "share_link_created", grain_id=grain_id, grant_id=gid, by=caller.account_id, role=role
        )
        return secret, _view(after, gid)

    async def grain_token(
        self, caller: Principal, grain_id: str, role: str, label: str, ttl: int
    ) -> tuple[str, GrantView]:
        if not label.strip():
            raise GrainhouseError(Kind.INVALID, "label: required")
        secret, gid, after = await self._credential_grant(
            caller, grain_id, role, label, ttl, "grain_token"
        )
        await self.events.audit(
            "token_created",
            kind="grain_token",
            grain_id=grain_id,
            grant_id=gid,
            by=caller.account_id,
        )
        return secret, _view(after, gid)

    async def redeem_link(
        self, caller: Principal, link_secret: str
    ) -> tuple[str, GrantView | None]:
        if caller.kind != "session" or caller.account is None:
            raise GrainhouseError(Kind.UNAUTHENTICATED, "log in to keep a shared grain")
        async with self.pool.connection() as conn, conn.transaction():
            found = await grains.find_credential(conn, "share_link", link_secret)
            if found is None:
                raise GrainhouseError(Kind.NOT_FOUND, "link unknown or revoked")
            cred_id, grain_id = found
            snap = await self._locked(conn, grain_id)
            link_grants = [
                g for g in snap.graph.grants.values() if g.grantee == Grantee("share_link", cred_id)
            ]
            if not link_grants or not snap.graph.is_live(link_grants[0].grant_id):
                raise GrainhouseError(Kind.NOT_FOUND, "link unknown or revoked")
            link = link_grants[0]
            me = caller.account_id
            if me == snap.grain.owner_account_id:
                return grain_id, None
            for g in snap.graph.grants.values():
                if g.parent_id == link.grant_id and g.grantee == Grantee("account", me):
                    return grain_id, _view(snap, g.grant_id)
            gid = await grains.insert_grant(
                conn,
                grain_id,
                Grantee("account", me),
                link.role,
                link.granted_by,
                link.grant_id,
                snap.meta[link.grant_id].label,
            )
            after = await grains.load(conn, grain_id, _now())
            assert after is not None
        await self.events.audit("share_link_redeemed", grain_id=grain_id, grant_id=gid, by=me)
        return grain_id, _view(after, gid)

    # -- looking and taking back --

    async def list_access(self, caller: Principal, grain_id: str) -> tuple[str, list[GrantView]]:
        who = _need_reader(caller)
        async with self.pool.connection() as conn:
            snap = await grains.load(conn, grain_id, _now()) if grain_id else None
        if snap is None or snap.graph.account_access(who) is None:
            raise GrainhouseError(Kind.NOT_FOUND, NOT_VISIBLE)
        return snap.grain.owner_account_id, [_view(snap, g) for g in snap.graph.visible_to(who)]

    async def _managed(
        self, conn: Conn, caller: Principal, grant_id: str
    ) -> tuple[grains.Snapshot, str]:
        who = _need_sharer(caller)
        if not grant_id:
            raise GrainhouseError(Kind.INVALID, "grant_id: required")
        row = await conn.execute("SELECT grain_id FROM grants WHERE grant_id = %s", (grant_id,))
        found = await row.fetchone()
        if found is None:
            raise GrainhouseError(Kind.NOT_FOUND, "grant not found")
        snap = await self._locked(conn, found[0])
        if grant_id not in snap.graph.visible_to(who):
            raise GrainhouseError(Kind.NOT_FOUND, "grant not found")
        if not snap.graph.may_manage(who, grant_id):
            raise GrainhouseError(Kind.PERMISSION, "only the owner or the granter may change it")
        return snap, who

    async def revoke(self, caller: Principal, grant_id: str) -> list[str]:
        async with self.pool.connection() as conn, conn.transaction():
            exists = await (
                await conn.execute("SELECT 1 FROM grants WHERE grant_id = %s", (grant_id,))
            ).fetchone()
            if exists is None and grant_id:
                _need_sharer(caller)
                return []  # already gone: idempotent
            snap, who = await self._managed(conn, caller, grant_id)
            gone = snap.graph.subtree(grant_id)
            dead_creds = await grains.delete_grants(conn, gone)
            grain_id = snap.grain.grain_id
        await self.events.revoked(grain_id=grain_id, grant_ids=gone, credential_ids=dead_creds)
        await self.events.audit("share_revoked", grain_id=grain_id, grant_ids=gone, by=who)
        return gone

    async def change_role(self, caller: Principal, grant_id: str, role: str) -> GrantView:
        async with self.pool.connection() as conn, conn.transaction():
            snap, who = await self._managed(conn, caller, grant_id)
            try:
                narrows = snap.graph.check_role_change(who, grant_id, role)
            except RoleUnknownError:
                raise GrainhouseError(
                    Kind.INVALID, f"role: {role!r} is not a role of this app"
                ) from None
            except (ExceedsOwnAccessError, NoAccessError):
                raise GrainhouseError(
                    Kind.PERMISSION, "role exceeds your own permissions"
                ) from None
            await grains.update_grant(conn, grant_id, role)
            grain_id = snap.grain.grain_id
            after = await grains.load(conn, grain_id, _now())
            assert after is not None
        if narrows:
            await self.events.revoked(grain_id=grain_id, grant_ids=snap.graph.subtree(grant_id))
        await self.events.audit(
            "share_role_changed", grain_id=grain_id, grant_id=grant_id, role=role, by=who
        )
        return _view(after, grant_id)

    # -- the decision --

    async def decide(self, principal: Principal, grain_id: str, write: bool = False) -> Decision:
        if principal.kind == "api_token" and not principal.has_scope("read"):
            return Decision(False, "insufficient_scope")
        if principal.grain_id and principal.grain_id != grain_id:
            return Decision(False, "wrong_grain")
        async with self.pool.connection() as conn:
            snap = await grains.load(conn, grain_id, _now())
        if snap is None:
            return Decision(False, "unknown_grain")
        access = snap.graph.access_of(principal.grantee)
        if access is None:
            return Decision(False, "no_access")
        return Decision(
            True,
            access=access,
            permissions=tuple(access.ordered(snap.graph.policy)),
            owner_account_id=snap.grain.owner_account_id,
        )


def _need_reader(p: Principal) -> str:
    if p.account is None:
        raise GrainhouseError(Kind.PERMISSION, "only an account can see who has access")
    return p.account.account_id
