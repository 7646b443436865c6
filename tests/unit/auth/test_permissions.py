"""The permission engine: chains, cascades, narrowing, owners who lose access, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grainhouse_auth.permissions import (
    ExceedsOwnAccessError,
    Grant,
    Grantee,
    GrantGraph,
    NoAccessError,
    Policy,
    RoleUnknownError,
)

pytestmark = pytest.mark.unit

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PERMS = ("read", "comment", "edit", "admin")
ROLES = {
    "viewer": frozenset({"read"}),
    "commenter": frozenset({"read", "comment"}),
    "editor": frozenset({"read", "comment", "edit"}),
    "manager": frozenset(PERMS),
    "blind": frozenset(),
}
POLICY = Policy(owner="alice", roles=ROLES, permissions=PERMS)


def acct(x: str) -> Grantee:
    return Grantee("account", x)


def g(gid: str, who: Grantee, role: str, by: str, parent: str | None, exp=None) -> Grant:  # type: ignore[no-untyped-def]
    return Grant(gid, who, role, by, parent, exp)


def graph(*grants: Grant, policy: Policy = POLICY, now: datetime = NOW) -> GrantGraph:
    return GrantGraph.of(policy, grants, now)


def chain_abc() -> list[Grant]:
    # alice (owner) -> bob editor -> carol commenter -> dave editor (capped by carol)
    return [
        g("g1", acct("bob"), "editor", "alice", None),
        g("g2", acct("carol"), "commenter", "bob", "g1"),
        g("g3", acct("dave"), "editor", "carol", "g2"),
    ]


def test_owner_has_every_permission_without_a_grant() -> None:
    a = graph().account_access("alice")
    assert a is not None and a.is_owner and a.permissions == frozenset(PERMS)
    assert a.grant_chain == () and a.role == ""


def test_stranger_has_no_access() -> None:
    assert graph(*chain_abc()).account_access("eve") is None


def test_chain_intersects_roles_along_the_way() -> None:
    gr = graph(*chain_abc())
    assert gr.account_access("bob").permissions == ROLES["editor"]  # type: ignore[union-attr]
    assert gr.account_access("carol").permissions == ROLES["commenter"]  # type: ignore[union-attr]
    dave = gr.account_access("dave")
    assert dave is not None
    assert dave.permissions == frozenset({"read", "comment"})  # not edit: carol lacks it
    assert dave.role == "editor"
    assert dave.grant_chain == ("g1", "g2", "g3")


def test_revoking_a_middle_grant_cuts_everything_below_it() -> None:
    grants = chain_abc()
    gr = graph(*grants)
    assert gr.subtree("g2") == ["g2", "g3"]
    survivors = [x for x in grants if x.grant_id not in gr.subtree("g2")]
    after = graph(*survivors)
    assert after.account_access("bob") is not None
    assert after.account_access("carol") is None
    assert after.account_access("dave") is None


def test_missing_parent_kills_the_child_even_without_the_cascade() -> None:
    grants = [x for x in chain_abc() if x.grant_id != "g1"]
    gr = graph(*grants)
    assert gr.account_access("carol") is None and gr.account_access("dave") is None


def test_lowering_a_role_narrows_the_descendants() -> None:
    grants = chain_abc()
    grants[0] = g("g1", acct("bob"), "viewer", "alice", None)
    gr = graph(*grants)
    assert gr.account_access("carol").permissions == frozenset({"read"})  # type: ignore[union-attr]
    assert gr.account_access("dave").permissions == frozenset({"read"})  # type: ignore[union-attr]


def test_owner_who_loses_the_grain_loses_access_and_their_shares_die() -> None:
    moved = Policy(owner="zoe", roles=ROLES, permissions=PERMS)
    gr = graph(*chain_abc(), policy=moved)
    assert gr.account_access("alice") is None
    assert gr.account_access("bob") is None
    assert gr.account_access("dave") is None
    assert gr.account_access("zoe").is_owner  # type: ignore[union-attr]


def test_expired_grant_and_its_descendants_are_dead() -> None:
    grants = chain_abc()
    grants[1] = g("g2", acct("carol"), "commenter", "bob", "g1", NOW - timedelta(seconds=1))
    gr = graph(*grants)
    assert gr.account_access("bob") is not None
    assert gr.account_access("carol") is None and gr.account_access("dave") is None
    # The same grant just before its expiry still works.
    earlier = graph(*grants, now=NOW - timedelta(seconds=2))
    assert earlier.account_access("dave") is not None


def test_forged_granter_does_not_link() -> None:
    # eve claims to share through bob's grant, but she does not hold it.
    gr = graph(*chain_abc(), g("g9", acct("eve"), "viewer", "eve", "g1"))
    assert gr.account_access("eve") is None


def test_root_grant_made_by_a_non_owner_is_dead() -> None:
    assert graph(g("g1", acct("bob"), "viewer", "mallory", None)).account_access("bob") is None


def test_cycles_in_stored_data_are_dead_not_infinite() -> None:
    gr = graph(
        g("a", acct("bob"), "viewer", "carol", "b"),
        g("b", acct("carol"), "viewer", "bob", "a"),
    )
    assert gr.account_access("bob") is None and gr.account_access("carol") is None
    assert gr.may_manage("bob", "a")  # bob made b; a hangs below it in the loop
    assert set(gr.visible_to("alice")) <= {"a", "b"}


def test_share_link_redemption_hangs_below_the_link() -> None:
    link = Grantee("share_link", "l1")
    gr = graph(
        g("g1", link, "commenter", "alice", None),
        g("g2", acct("bob"), "commenter", "alice", "g1"),
    )
    assert gr.access_of(link).permissions == ROLES["commenter"]  # type: ignore[union-attr]
    assert gr.account_access("bob").grant_chain == ("g1", "g2")  # type: ignore[union-attr]
    # Grain API tokens never pass access on.
    tok = Grantee("grain_token", "t1")
    gr2 = graph(g("t", tok, "editor", "alice", None), g("x", acct("bob"), "viewer", "alice", "t"))
    assert gr2.access_of(tok) is not None and gr2.account_access("bob") is None


def test_account_with_two_grants_gets_the_union_and_the_widest_role() -> None:
    gr = graph(
        g("g1", acct("bob"), "viewer", "alice", None),
        g("g2", acct("carol"), "manager", "alice", None),
        g("g3", acct("bob"), "editor", "carol", "g2"),
    )
    a = gr.account_access("bob")
    assert a is not None and a.permissions == ROLES["editor"] and a.role == "editor"
    assert a.via == "g3" and set(a.grant_chain) == {"g1", "g2", "g3"}


def test_vanished_role_keeps_the_grant_but_yields_no_permissions() -> None:
    gr = graph(g("g1", acct("bob"), "retired-role", "alice", None))
    a = gr.account_access("bob")
    assert a is not None and a.permissions == frozenset()


def test_parent_for_sharing() -> None:
    gr = graph(*chain_abc())
    assert gr.parent_for("alice", "manager") is None
    assert gr.parent_for("bob", "editor") == "g1"
    assert gr.parent_for("carol", "viewer") == "g2"
    with pytest.raises(ExceedsOwnAccessError):
        gr.parent_for("carol", "editor")
    with pytest.raises(NoAccessError):
        gr.parent_for("eve", "viewer")
    with pytest.raises(RoleUnknownError):
        gr.parent_for("bob", "nope")


def test_who_may_manage_which_grant() -> None:
    gr = graph(*chain_abc())
    assert gr.may_manage("alice", "g3")
    assert gr.may_manage("bob", "g2") and gr.may_manage("bob", "g3")
    assert not gr.may_manage("bob", "g1")  # bob's own grant was made by alice
    assert not gr.may_manage("dave", "g3")
    assert not gr.may_manage("eve", "g1")


def test_role_change_checks_and_narrowing() -> None:
    gr = graph(*chain_abc())
    assert gr.check_role_change("alice", "g1", "viewer") is True
    assert gr.check_role_change("alice", "g1", "manager") is False
    with pytest.raises(ExceedsOwnAccessError):
        gr.check_role_change("bob", "g2", "manager")
    with pytest.raises(RoleUnknownError):
        gr.check_role_change("bob", "g2", "nope")


def test_visibility_for_owner_and_granters() -> None:
    gr = graph(*chain_abc(), g("g4", acct("erin"), "viewer", "alice", None))
    assert gr.visible_to("alice")[:2] in (["g1", "g4"], ["g4", "g1"])
    assert set(gr.visible_to("alice")) == {"g1", "g2", "g3", "g4"}
    assert gr.visible_to("bob") == ["g1", "g2", "g3"]
    assert gr.visible_to("carol") == ["g2", "g3"]
    assert gr.visible_to("dave") == ["g3"]
    assert gr.visible_to("eve") == []


# ---- properties over random sharing forests -------------------------------------------

ACCOUNTS = ("bob", "carol", "dave", "erin")


@st.composite
def forests(draw: st.DrawFn) -> list[Grant]:
    grants: list[Grant] = []
    for i in range(draw(st.integers(0, 12))):
        role = draw(st.sampled_from(sorted(ROLES)))
        holders = [x for x in grants if x.grantee.kind == "account"]
        parent = draw(st.one_of(st.none(), st.sampled_from(holders))) if holders else None
        who = acct(draw(st.sampled_from(ACCOUNTS)))
        exp = draw(st.one_of(st.none(), st.sampled_from([-60, 60]))) if i % 3 == 0 else None
        expires = None if exp is None else NOW + timedelta(seconds=exp)
        by = "alice" if parent is None else parent.grantee.id
        grants.append(g(f"g{i}", who, role, by, parent.grant_id if parent else None, expires))
    return grants


@settings(max_examples=300, deadline=None)
@given(forests())
def test_nobody_holds_more_than_their_parent_or_their_role(grants: list[Grant]) -> None:
    gr = graph(*grants)
    for x in grants:
        eff = gr.effective(x.grant_id)
        if eff is None:
            continue
        assert eff <= POLICY.role_permissions(x.role)
        if x.parent_id is not None:
            up = gr.effective(x.parent_id)
            assert up is not None and eff <= up


@settings(max_examples=300, deadline=None)
@given(forests(), st.data())
def test_revocation_cascade_leaves_no_access_resting_on_the_revoked(
    grants: list[Grant], data: st.DataObject
) -> None:
    if not grants:
        return
    target = data.draw(st.sampled_from(grants)).grant_id
    gr = graph(*grants)
    gone = set(gr.subtree(target))
    after = graph(*(x for x in grants if x.grant_id not in gone))
    for who in ACCOUNTS:
        a = after.account_access(who)
        if a is not None:
            assert not gone & set(a.grant_chain)
            before = gr.account_access(who)
            assert before is not None and a.permissions <= before.permissions


@settings(max_examples=300, deadline=None)
@given(forests(), st.data())
def test_narrowing_a_role_never_widens_anyone(grants: list[Grant], data: st.DataObject) -> None:
    if not grants:
        return
    target = data.draw(st.sampled_from(grants))
    new_role = data.draw(st.sampled_from(sorted(ROLES)))
    if not ROLES[new_role] <= ROLES[target.role]:
        return
    before = graph(*grants)
    changed = [
        g(x.grant_id, x.grantee, new_role, x.granted_by, x.parent_id, x.expires_at)
        if x.grant_id == target.grant_id
        else x
        for x in grants
    ]
    after = graph(*changed)
    for who in ACCOUNTS:
        a, b = after.account_access(who), before.account_access(who)
        if a is not None:
            assert b is not None and a.permissions <= b.permissions


@settings(max_examples=200, deadline=None)
@given(forests())
def test_expired_grants_and_everything_below_them_are_dead(grants: list[Grant]) -> None:
    gr = graph(*grants)
    for x in grants:
        if x.expires_at is not None and x.expires_at <= NOW:
            assert all(not gr.is_live(d) for d in gr.subtree(x.grant_id))


@settings(max_examples=200, deadline=None)
@given(forests())
def test_visible_lists_are_parent_before_child(grants: list[Grant]) -> None:
    gr = graph(*grants)
    for who in ("alice", *ACCOUNTS):
        order = gr.visible_to(who)
        pos = {gid: i for i, gid in enumerate(order)}
        for gid in order:
            parent = gr.grants[gid].parent_id
            if parent in pos:
                assert pos[parent] < pos[gid]
