"""Admin RPCs and "shared with me" through the real auth service (PostgreSQL, NATS).

SetAccountDisabled (revocation of sessions and tokens, its event, the rules on who may be
disabled), ListInvitations / RevokeInvitation, and ListSharedGrains (live grants only, paging).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import nats
import pytest

from grainhouse_proto import auth_pb2, auth_pb2_grpc, common_pb2

from .conftest import AuthStack, code_of, dev_user, invited_user, new_grain, unique

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode


def disable(stub, admin, account_id: str, disabled: bool = True):  # type: ignore[no-untyped-def]
    return stub.SetAccountDisabled(
        auth_pb2.SetAccountDisabledRequest(
            caller=admin.cred, account_id=account_id, disabled=disabled
        ),
        timeout=10,
    )


def shared(stub, user, size: int = 0, token: str = ""):  # type: ignore[no-untyped-def]
    return stub.ListSharedGrains(
        auth_pb2.ListSharedGrainsRequest(
            caller=user.cred, page=common_pb2.PageRequest(page_size=size, page_token=token)
        ),
        timeout=10,
    )


async def test_disabling_revokes_every_credential_and_says_so_on_nats(
    stub: auth_pb2_grpc.AuthStub, auth_stack: AuthStack
) -> None:
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    token = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(caller=user.cred, name="t", scopes=[auth_pb2.SCOPE_READ]),
        timeout=10,
    ).token_secret
    nc = await nats.connect(auth_stack.nats_url)
    events: list[dict[str, Any]] = []

    async def on_revoked(msg) -> None:  # type: ignore[no-untyped-def]
        # The fields of auth.proto's AccessRevokedEvent; JSON on the bus (events.py).
        events.append(json.loads(msg.data))

    await nc.subscribe("grainhouse.auth.grant.revoked", cb=on_revoked)
    await nc.flush()
    try:
        done = await asyncio.to_thread(disable, stub, admin, user.account_id)
        assert done.account.disabled and done.sessions_ended == 1 and done.tokens_revoked == 1
        for _ in range(50):
            if any(e["account_id"] == user.account_id for e in events):
                break
            await asyncio.sleep(0.02)
        mine = [e for e in events if e["account_id"] == user.account_id]
        assert mine and len(mine[0]["credential_ids"]) == 2
    finally:
        await nc.close()
    get = lambda: stub.GetSession(  # noqa: E731
        auth_pb2.GetSessionRequest(session_secret=user.session), timeout=10
    )
    assert code_of(get) == SC.UNAUTHENTICATED
    assert (
        code_of(
            lambda: stub.AuthenticateToken(
                auth_pb2.AuthenticateTokenRequest(bearer_secret=token), timeout=10
            )
        )
        == SC.UNAUTHENTICATED
    )
    again = disable(stub, admin, user.account_id)  # idempotent: nothing more to end
    assert again.account.disabled and again.sessions_ended == 0 and again.tokens_revoked == 0
    back = disable(stub, admin, user.account_id, False)
    assert not back.account.disabled


def test_who_may_disable_whom(stub: auth_pb2_grpc.AuthStub) -> None:
    admin, other_admin = dev_user(stub, admin=True), dev_user(stub, admin=True)
    user = dev_user(stub)
    assert code_of(lambda: disable(stub, user, other_admin.account_id)) == SC.PERMISSION_DENIED
    assert code_of(lambda: disable(stub, admin, admin.account_id)) == SC.FAILED_PRECONDITION
    assert code_of(lambda: disable(stub, admin, "operator")) == SC.FAILED_PRECONDITION
    assert code_of(lambda: disable(stub, admin, "acc_nobody")) == SC.NOT_FOUND
    assert code_of(lambda: disable(stub, admin, "")) == SC.INVALID_ARGUMENT
    # Another admin can be disabled while enabled admins remain.
    assert disable(stub, admin, other_admin.account_id).account.disabled
    disable(stub, admin, other_admin.account_id, False)


def test_invitations_list_and_revoke(stub: auth_pb2_grpc.AuthStub) -> None:
    admin, user = dev_user(stub, admin=True), dev_user(stub)
    email = f"{unique('inv')}@example.org"
    made = stub.CreateInvitation(
        auth_pb2.CreateInvitationRequest(caller=admin.cred, email=email), timeout=10
    )
    listed = stub.ListInvitations(
        auth_pb2.ListInvitationsRequest(caller=admin.cred, page=common_pb2.PageRequest()),
        timeout=10,
    ).invitations
    assert made.invitation.invitation_id in [i.invitation_id for i in listed]
    assert (
        code_of(lambda: stub.ListInvitations(auth_pb2.ListInvitationsRequest(caller=user.cred)))
        == SC.PERMISSION_DENIED
    )
    stub.RevokeInvitation(
        auth_pb2.RevokeInvitationRequest(
            caller=admin.cred, invitation_id=made.invitation.invitation_id
        ),
        timeout=10,
    )
    everything = stub.ListInvitations(
        auth_pb2.ListInvitationsRequest(caller=admin.cred, include_closed=True), timeout=10
    ).invitations
    assert made.invitation.invitation_id not in [i.invitation_id for i in everything]
    create = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            invitation_secret=made.invitation_secret,
            details=auth_pb2.NewAccountDetails(email=email, display_name="Late"),
        ),
        timeout=10,
    )
    assert code_of(create) == SC.NOT_FOUND
    assert (
        code_of(
            lambda: stub.RevokeInvitation(
                auth_pb2.RevokeInvitationRequest(caller=admin.cred, invitation_id="tkt_nobody")
            )
        )
        == SC.NOT_FOUND
    )


def test_shared_grains_are_live_grants_only_and_page(stub: auth_pb2_grpc.AuthStub) -> None:
    owner, middle, friend = dev_user(stub), dev_user(stub), dev_user(stub)
    grains = [new_grain(stub, owner) for _ in range(3)]
    grants = [
        stub.GrantAccess(
            auth_pb2.GrantAccessRequest(
                caller=owner.cred, grain_id=g, account_id=friend.account_id, role="viewer"
            ),
            timeout=10,
        ).grant
        for g in grains
    ]
    # A re-share: owner → middle (editor) → friend (commenter) on a fourth grain.
    chained = new_grain(stub, owner)
    to_middle = stub.GrantAccess(
        auth_pb2.GrantAccessRequest(
            caller=owner.cred, grain_id=chained, account_id=middle.account_id, role="editor"
        ),
        timeout=10,
    ).grant
    stub.GrantAccess(
        auth_pb2.GrantAccessRequest(
            caller=middle.cred, grain_id=chained, account_id=friend.account_id, role="commenter"
        ),
        timeout=10,
    )
    everything = shared(stub, friend).grains
    assert {g.grain_id for g in everything} == {*grains, chained}
    by_id = {g.grain_id: g for g in everything}
    assert by_id[chained].role == "commenter" and by_id[grains[0]].role == "viewer"
    assert by_id[grains[0]].owner_account_id == owner.account_id
    assert by_id[grains[0]].title == "Test grain"
    assert shared(stub, owner).grains == []  # owned grains are never "shared with me"

    # Pages of two: every grain once, newest grant first.
    first = shared(stub, friend, 2)
    assert len(first.grains) == 2 and first.page.next_page_token
    second = shared(stub, friend, 2, first.page.next_page_token)
    ids = [g.grain_id for g in first.grains] + [g.grain_id for g in second.grains]
    assert sorted(ids) == sorted([*grains, chained]) and not second.page.next_page_token
    assert ids[0] == chained

    # Revoking the middle grant cuts the friend's re-shared access: the grain leaves the list.
    stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=owner.cred, grant_id=to_middle.grant_id))
    stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=owner.cred, grant_id=grants[1].grant_id))
    assert {g.grain_id for g in shared(stub, friend).grains} == {grains[0], grains[2]}

    # Grain-bound credentials have no "shared with me".
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=owner.cred, grain_id=grains[0], role="viewer"),
        timeout=10,
    )
    as_link = auth_pb2.Credential(share_link_secret=link.share_link_secret)
    assert (
        code_of(lambda: stub.ListSharedGrains(auth_pb2.ListSharedGrainsRequest(caller=as_link)))
        == SC.PERMISSION_DENIED
    )
