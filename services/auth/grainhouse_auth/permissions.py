"""The permission engine: who may use a grain, with which permissions, and why.

Owns: the rules of the sharing graph (pure functions over plain values; no I/O).
Trusts: the grants and policy it is given are the current, stored ones.
Never: touches the database, the bus or a secret; never decides on anything it was not given.

The grants of one grain form a forest rooted at the owner. A grant is *live* when every grant on
its chain back to the owner is unexpired, each child was made by the account that held its
parent (or, for a share link's parent, was a redemption of that link), and the root was made by
the grain's *current* owner. Effective permissions are the intersection of the role permissions
along the chain, so nobody passes on more than they hold and narrowing a grant narrows everything
made through it. Revoking a grant revokes its descendants (`subtree`); even without the cascade a
child of a missing parent is dead, so the rules hold for whatever is stored.

An owner who loses the grain (ownership moved by RegisterGrain) loses access and every root grant
they made dies with it: access always flows from whoever owns the grain now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

GranteeKind = Literal["account", "share_link", "grain_token"]


class RoleUnknownError(ValueError):
    """A role name the grain's app does not define."""


class NoAccessError(LookupError):
    """The account holds no live access to the grain (callers answer NOT_FOUND)."""


class ExceedsOwnAccessError(PermissionError):
    """The account tried to pass on (or set) more than it holds itself."""


@dataclass(frozen=True)
class Grantee:
    kind: GranteeKind
    id: str


@dataclass(frozen=True)
class Grant:
    grant_id: str
    grantee: Grantee
    role: str
    granted_by: str  # account id of the granter
    parent_id: str | None  # None: the granter was the owner
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    """A grain's owner and its app's roles (from the manifest, via RegisterGrain)."""

    owner: str
    roles: Mapping[str, frozenset[str]]
    permissions: tuple[str, ...]  # every permission the app defines, manifest order

    def role_permissions(self, role: str) -> frozenset[str]:
        # A role that vanished in an app upgrade yields nothing, rather than failing.
        return self.roles.get(role, frozenset()) & frozenset(self.permissions)

    def require_role(self, role: str) -> frozenset[str]:
        if role not in self.roles:
            raise RoleUnknownError(role)
        return self.role_permissions(role)


@dataclass(frozen=True)
class Access:
    """What one principal may do on one grain."""

    is_owner: bool
    permissions: frozenset[str]
    role: str  # role of the best grant held; empty for the owner
    grant_chain: tuple[str, ...]  # every grant the answer rests on, root first
    via: str | None  # the best live grant held (None for the owner)

    def ordered(self, policy: Policy) -> list[str]:
        return [p for p in policy.permissions if p in self.permissions]


@dataclass
class GrantGraph:
    """The stored grants of one grain, evaluated at `now`."""

    policy: Policy
    grants: Mapping[str, Grant]
    now: datetime
    _children: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _memo: dict[str, tuple[frozenset[str], tuple[str, ...]] | None] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def of(cls, policy: Policy, grants: Iterable[Grant], now: datetime) -> GrantGraph:
        return cls(policy, {g.grant_id: g for g in grants}, now)

    def __post_init__(self) -> None:
        for g in self.grants.values():
            if g.parent_id is not None:
                self._children.setdefault(g.parent_id, []).append(g.grant_id)

    # -- liveness and effective permissions --

    def _expired(self, g: Grant) -> bool:
        return g.expires_at is not None and g.expires_at <= self.now

    def _linked(self, g: Grant, parent: Grant) -> bool:
        if parent.grantee.kind == "account":
            return g.granted_by == parent.grantee.id
        if parent.grantee.kind == "share_link":
            # Redeeming a link: the redeemer's grant hangs below the link's grant.
            return g.grantee.kind == "account"
        return False  # a grain API token never passes access on

    def resolve(self, grant_id: str) -> tuple[frozenset[str], tuple[str, ...]] | None:
        """(effective permissions, chain root-first) of a live grant; None if it is dead."""
        if grant_id in self._memo:
            return self._memo[grant_id]
        self._memo[grant_id] = None  # a cycle in stored data resolves to dead
        g = self.grants.get(grant_id)
        result: tuple[frozenset[str], tuple[str, ...]] | None = None
        if g is not None and not self._expired(g):
            own = self.policy.role_permissions(g.role)
            if g.parent_id is None:
                if g.granted_by == self.policy.owner:
                    result = (own, (g.grant_id,))
            else:
                parent = self.grants.get(g.parent_id)
                up = self.resolve(g.parent_id) if parent is not None else None
                if parent is not None and up is not None and self._linked(g, parent):
                    result = (own & up[0], (*up[1], g.grant_id))
        self._memo[grant_id] = result
        return result

    def is_live(self, grant_id: str) -> bool:
        return self.resolve(grant_id) is not None

    def effective(self, grant_id: str) -> frozenset[str] | None:
        r = self.resolve(grant_id)
        return None if r is None else r[0]

    # -- principals --

    def _held(self, grantee: Grantee) -> list[Grant]:
        return [
            g for g in self.grants.values() if g.grantee == grantee and self.is_live(g.grant_id)
        ]

    def access_of(self, grantee: Grantee) -> Access | None:
        """The access a grantee holds, or None. Accounts union all their live grants."""
        if grantee.kind == "account" and grantee.id == self.policy.owner:
            return Access(True, frozenset(self.policy.permissions), "", (), None)
        held = self._held(grantee)
        if not held:
            return None
        perms: frozenset[str] = frozenset()
        chain: list[str] = []
        best: Grant | None = None
        best_perms: frozenset[str] = frozenset()
        for g in held:
            eff, ch = self.resolve(g.grant_id)  # type: ignore[misc]  # live: not None
            perms |= eff
            chain.extend(c for c in ch if c not in chain)
            if best is None or len(eff) > len(best_perms):
                best, best_perms = g, eff
        assert best is not None
        return Access(False, perms, best.role, tuple(chain), best.grant_id)

    def account_access(self, account_id: str) -> Access | None:
        return self.access_of(Grantee("account", account_id))

    # -- sharing --

    def parent_for(self, account_id: str, role: str) -> str | None:
        """The grant an account shares `role` through (None: it is the owner).

        Raises RoleUnknownError, NoAccessError, or ExceedsOwnAccessError.
        """
        needed = self.policy.require_role(role)
        if account_id == self.policy.owner:
            return None
        candidates = []
        for g in self._held(Grantee("account", account_id)):
            eff = self.effective(g.grant_id)
            assert eff is not None
            candidates.append((len(eff), g.grant_id, eff))
        if not candidates:
            raise NoAccessError(account_id)
        fitting = [c for c in candidates if needed <= c[2]]
        if not fitting:
            raise ExceedsOwnAccessError(role)
        # The widest grant that covers the role: it survives the most narrowing upstream.
        return max(fitting, key=lambda c: (c[0], c[1]))[1]

    def may_manage(self, account_id: str, grant_id: str) -> bool:
        """The owner manages every grant; a granter manages what they made and its subtree."""
        if account_id == self.policy.owner:
            return True
        seen: set[str] = set()
        cur = self.grants.get(grant_id)
        while cur is not None and cur.grant_id not in seen:
            if cur.granted_by == account_id:
                return True
            seen.add(cur.grant_id)
            cur = self.grants.get(cur.parent_id) if cur.parent_id else None
        return False

    def check_role_change(self, account_id: str, grant_id: str, role: str) -> bool:
        """Validate a role change by `account_id`; True if it narrows (someone loses something).

        Raises RoleUnknownError, NoAccessError (grant unknown), ExceedsOwnAccessError.
        """
        g = self.grants.get(grant_id)
        if g is None:
            raise NoAccessError(grant_id)
        new = self.policy.require_role(role)
        mine = self.account_access(account_id)
        if mine is None or not new <= mine.permissions:
            raise ExceedsOwnAccessError(role)
        return not self.policy.role_permissions(g.role) <= new

    def subtree(self, grant_id: str) -> list[str]:
        """The grant and every grant made through it, parent before child."""
        if grant_id not in self.grants:
            return []
        out, queue, seen = [], [grant_id], {grant_id}
        while queue:
            cur = queue.pop(0)
            out.append(cur)
            for child in self._children.get(cur, []):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return out

    def visible_to(self, account_id: str) -> list[str]:
        """Grants an account may see in "who has access", parent before child."""
        if account_id == self.policy.owner:
            roots = [g.grant_id for g in self.grants.values() if g.parent_id not in self.grants]
        else:
            roots = [g.grant_id for g in self.grants.values() if g.granted_by == account_id]
            roots += [
                g.grant_id
                for g in self.grants.values()
                if g.grantee == Grantee("account", account_id)
            ]
        out: list[str] = []
        seen: set[str] = set()
        for r in roots:
            for gid in self.subtree(r):
                if gid not in seen:
                    seen.add(gid)
                    out.append(gid)
        return sorted(out, key=self._depth)

    def _depth(self, grant_id: str) -> int:
        depth, seen = 0, {grant_id}
        cur = self.grants[grant_id]
        while cur.parent_id and cur.parent_id in self.grants and cur.parent_id not in seen:
            seen.add(cur.parent_id)
            cur = self.grants[cur.parent_id]
            depth += 1
        return depth
