"""The permission engine through the real service: chains of shares, revocation cascades,
role changes, an owner who loses the grain, expiry, grain tokens, and revocation events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import nats
import pytest

from grainhouse_proto import auth_pb2, auth_pb2_grpc

from .conftest import (
    VIEW_INFO,
    AuthStack,
    authorize,
    bearer,
    code_of,
    dev_user,
    link_cred,
    new_grain,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode


def grant(stub, caller, grain_id: str, account_id: str, role: str) -> auth_pb2.Grant:  # type: ignore[no-untyped-def]
    return stub.GrantAccess(
        auth_pb2.GrantAccessRequest(
            caller=caller.cred, grain_id=grain_id, account_id=account_id, role=role
        ),
        timeout=10,
    ).grant


def perms(stub, user, grain_id: str) -> list[str] | None:  # type: ignore[no-untyped-def]
    r = authorize(stub, user.cred, grain_id)
    return list(r.permissions) if r.allowed else None


def test_owner_has_everything_and_strangers_nothing(stub) -> None:  # type: ignore[no-untyped-def]
    owner, stranger = dev_user(stub), dev_user(stub)
    g = new_grain(stub, owner)
    r = authorize(stub, owner.cred, g)
    assert r.allowed and r.is_owner and list(r.permissions) == ["read", "comment", "edit"]
    assert r.identity.display_name == owner.name and len(r.identity.user_id) == 32
    assert r.identity.user_id != owner.account_id
    no = authorize(stub, stranger.cred, g)
    assert not no.allowed and no.deny_reason == auth_pb2.DENY_REASON_NO_ACCESS
    unknown = authorize(stub, owner.cred, "no-such-grain")
    assert unknown.deny_reason == auth_pb2.DENY_REASON_UNKNOWN_GRAIN
    bad = authorize(stub, auth_pb2.Credential(session_secret="ghs_nope"), g)
    assert bad.deny_reason == auth_pb2.DENY_REASON_UNAUTHENTICATED


def test_chain_narrowing_cascade_and_who_has_access(stub) -> None:  # type: ignore[no-untyped-def]
    a, b, c, d = (dev_user(stub) for _ in range(4))
    g = new_grain(stub, a)
    gb = grant(stub, a, g, b.account_id, "editor")
    gc = grant(stub, b, g, c.account_id, "commenter")
    assert gc.parent_grant_id == gb.grant_id and gc.granted_by_account_id == b.account_id
    # C cannot pass on more than C holds.
    too_much = lambda: grant(stub, c, g, d.account_id, "editor")  # noqa: E731
    assert code_of(too_much) == SC.PERMISSION_DENIED
    gd = grant(stub, c, g, d.account_id, "viewer")
    assert perms(stub, d, g) == ["read"]
    r = authorize(stub, d.cred, g)
    assert list(r.grant_chain) == [gb.grant_id, gc.grant_id, gd.grant_id]
    # Who has access: the owner sees the whole forest, parent before child; B sees its subtree.
    owner_view = stub.ListAccess(auth_pb2.ListAccessRequest(caller=a.cred, grain_id=g))
    assert owner_view.owner_account_id == a.account_id
    assert [x.grant_id for x in owner_view.grants] == [gb.grant_id, gc.grant_id, gd.grant_id]
    assert owner_view.grants[1].grantee_display_name == c.name
    b_view = stub.ListAccess(auth_pb2.ListAccessRequest(caller=b.cred, grain_id=g))
    assert [x.grant_id for x in b_view.grants] == [gb.grant_id, gc.grant_id, gd.grant_id]
    d_view = stub.ListAccess(auth_pb2.ListAccessRequest(caller=d.cred, grain_id=g))
    assert [x.grant_id for x in d_view.grants] == [gd.grant_id]
    # Narrowing B narrows C (edit was never passed on; now comment goes too).
    stub.ChangeGrantRole(
        auth_pb2.ChangeGrantRoleRequest(caller=a.cred, grant_id=gb.grant_id, role="viewer")
    )
    assert perms(stub, c, g) == ["read"]
    # C cannot even see B's grant; D sees its own grant but did not make it.
    unseen = lambda: stub.RevokeGrant(  # noqa: E731
        auth_pb2.RevokeGrantRequest(caller=c.cred, grant_id=gb.grant_id)
    )
    assert code_of(unseen) == SC.NOT_FOUND
    refused = lambda: stub.RevokeGrant(  # noqa: E731
        auth_pb2.RevokeGrantRequest(caller=d.cred, grant_id=gd.grant_id)
    )
    assert code_of(refused) == SC.PERMISSION_DENIED
    stranger = dev_user(stub)
    hidden = lambda: stub.RevokeGrant(  # noqa: E731
        auth_pb2.RevokeGrantRequest(caller=stranger.cred, grant_id=gb.grant_id)
    )
    assert code_of(hidden) == SC.NOT_FOUND
    # Revoking B's grant removes everything that flowed from it.
    gone = stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=a.cred, grant_id=gb.grant_id))
    assert list(gone.revoked_grant_ids) == [gb.grant_id, gc.grant_id, gd.grant_id]
    assert perms(stub, b, g) is None and perms(stub, c, g) is None and perms(stub, d, g) is None
    again = stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=a.cred, grant_id=gb.grant_id))
    assert list(again.revoked_grant_ids) == []


def test_owner_who_loses_the_grain_loses_access_and_their_shares(stub) -> None:  # type: ignore[no-untyped-def]
    a, b, z = dev_user(stub), dev_user(stub), dev_user(stub)
    g = new_grain(stub, a)
    grant(stub, a, g, b.account_id, "editor")
    assert perms(stub, b, g) == ["read", "comment", "edit"]
    stub.RegisterGrain(
        auth_pb2.RegisterGrainRequest(
            grain_id=g, owner_account_id=z.account_id, view_info=VIEW_INFO
        )
    )
    assert perms(stub, a, g) is None and perms(stub, b, g) is None
    assert authorize(stub, z.cred, g).is_owner


def test_app_upgrade_that_drops_a_role_keeps_the_grant_without_permissions(stub) -> None:  # type: ignore[no-untyped-def]
    a, b = dev_user(stub), dev_user(stub)
    g = new_grain(stub, a)
    grant(stub, a, g, b.account_id, "commenter")
    upgraded = auth_pb2.RegisterGrainRequest(grain_id=g, owner_account_id=a.account_id)
    upgraded.view_info.CopyFrom(VIEW_INFO)
    del upgraded.view_info.roles[1]  # "commenter" is gone
    stub.RegisterGrain(upgraded)
    r = authorize(stub, b.cred, g)
    assert r.allowed and list(r.permissions) == []


def test_share_links_anonymous_use_redeem_and_expiry(stub) -> None:  # type: ignore[no-untyped-def]
    a, b = dev_user(stub), dev_user(stub)
    g, other = new_grain(stub, a), new_grain(stub, a)
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(
            caller=a.cred, grain_id=g, role="commenter", base_url="http://h"
        )
    )
    assert link.url == f"http://h/shared/{link.share_link_secret}"
    assert link.share_link_secret.startswith("ghl_")
    anon = authorize(stub, link_cred(link.share_link_secret), g)
    assert anon.allowed and list(anon.permissions) == ["read", "comment"]
    assert anon.identity.is_anonymous and anon.principal.kind == auth_pb2.PRINCIPAL_KIND_SHARE_LINK
    wrong = authorize(stub, link_cred(link.share_link_secret), other)
    assert wrong.deny_reason == auth_pb2.DENY_REASON_WRONG_GRAIN
    red = stub.RedeemShareLink(
        auth_pb2.RedeemShareLinkRequest(caller=b.cred, share_link_secret=link.share_link_secret)
    )
    assert red.grain_id == g and red.grant.parent_grant_id == link.grant.grant_id
    same = stub.RedeemShareLink(
        auth_pb2.RedeemShareLinkRequest(caller=b.cred, share_link_secret=link.share_link_secret)
    )
    assert same.grant.grant_id == red.grant.grant_id
    own = stub.RedeemShareLink(
        auth_pb2.RedeemShareLinkRequest(caller=a.cred, share_link_secret=link.share_link_secret)
    )
    assert own.grain_id == g and not own.HasField("grant")
    assert perms(stub, b, g) == ["read", "comment"]
    # Revoking the link kills it and what was redeemed through it.
    stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=a.cred, grant_id=link.grant.grant_id))
    assert authorize(stub, link_cred(link.share_link_secret), g).deny_reason == (
        auth_pb2.DENY_REASON_UNAUTHENTICATED
    )
    assert perms(stub, b, g) is None
    # A link with a lifetime stops working when it ends.
    short = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=a.cred, grain_id=g, role="viewer", ttl_seconds=1)
    )
    assert authorize(stub, link_cred(short.share_link_secret), g).allowed
    deadline = time.monotonic() + 30
    while authorize(stub, link_cred(short.share_link_secret), g).allowed:
        assert time.monotonic() < deadline, "expired link still works"
        time.sleep(0.2)
    too_long = lambda: stub.CreateShareLink(  # noqa: E731
        auth_pb2.CreateShareLinkRequest(
            caller=a.cred, grain_id=g, role="viewer", ttl_seconds=400 * 86400
        )
    )
    assert code_of(too_long) == SC.INVALID_ARGUMENT
    unknown_role = lambda: stub.CreateShareLink(  # noqa: E731
        auth_pb2.CreateShareLinkRequest(caller=a.cred, grain_id=g, role="god")
    )
    assert code_of(unknown_role) == SC.INVALID_ARGUMENT
    invisible = lambda: stub.CreateShareLink(  # noqa: E731
        auth_pb2.CreateShareLinkRequest(caller=b.cred, grain_id=g, role="viewer")
    )
    assert code_of(invisible) == SC.NOT_FOUND


def test_grain_api_tokens_are_bound_to_one_grain_and_one_role(stub) -> None:  # type: ignore[no-untyped-def]
    a = dev_user(stub)
    g, other = new_grain(stub, a), new_grain(stub, a)
    t = stub.CreateGrainApiToken(
        auth_pb2.CreateGrainApiTokenRequest(caller=a.cred, grain_id=g, role="viewer", label="DAVx5")
    )
    assert t.token_secret.startswith("ghg_") and t.grant.grain_api_token_id
    who = stub.AuthenticateToken(auth_pb2.AuthenticateTokenRequest(bearer_secret=t.token_secret))
    assert who.principal.kind == auth_pb2.PRINCIPAL_KIND_GRAIN_API_TOKEN
    assert who.principal.grain_id == g and not who.HasField("account")
    r = authorize(stub, bearer(t.token_secret), g)
    assert r.allowed and list(r.permissions) == ["read"] and r.identity.display_name == a.name
    assert authorize(stub, bearer(t.token_secret), other).deny_reason == (
        auth_pb2.DENY_REASON_WRONG_GRAIN
    )
    stub.RevokeGrant(auth_pb2.RevokeGrantRequest(caller=a.cred, grant_id=t.grant.grant_id))
    dead = lambda: stub.AuthenticateToken(  # noqa: E731
        auth_pb2.AuthenticateTokenRequest(bearer_secret=t.token_secret)
    )
    assert code_of(dead) == SC.UNAUTHENTICATED


def test_personal_api_token_scopes_in_authorize(stub) -> None:  # type: ignore[no-untyped-def]
    a = dev_user(stub)
    g = new_grain(stub, a)
    read = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(caller=a.cred, name="r", scopes=[auth_pb2.SCOPE_READ])
    )
    r = authorize(stub, bearer(read.token_secret), g)
    assert r.allowed and r.is_owner and r.principal.kind == auth_pb2.PRINCIPAL_KIND_API_TOKEN
    # A read-only token may not share.
    share = lambda: stub.CreateShareLink(  # noqa: E731
        auth_pb2.CreateShareLinkRequest(caller=bearer(read.token_secret), grain_id=g, role="viewer")
    )
    assert code_of(share) == SC.PERMISSION_DENIED


def test_forgetting_a_grain_drops_everything(stub) -> None:  # type: ignore[no-untyped-def]
    a, b = dev_user(stub), dev_user(stub)
    g = new_grain(stub, a)
    grant(stub, a, g, b.account_id, "viewer")
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=a.cred, grain_id=g, role="viewer")
    )
    stub.ForgetGrain(auth_pb2.ForgetGrainRequest(grain_id=g))
    stub.ForgetGrain(auth_pb2.ForgetGrainRequest(grain_id=g))  # idempotent
    assert authorize(stub, b.cred, g).deny_reason == auth_pb2.DENY_REASON_UNKNOWN_GRAIN
    assert authorize(stub, link_cred(link.share_link_secret), g).deny_reason == (
        auth_pb2.DENY_REASON_UNAUTHENTICATED
    )


async def test_revocation_event_is_out_before_the_answer_and_access_ends_at_once(
    auth_stack: AuthStack, stub
) -> None:  # type: ignore[no-untyped-def]
    a, b, c = dev_user(stub), dev_user(stub), dev_user(stub)
    g = new_grain(stub, a)
    gb = grant(stub, a, g, b.account_id, "editor")
    gc = grant(stub, b, g, c.account_id, "viewer")
    nc = await nats.connect(auth_stack.nats_url)
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    audit: asyncio.Queue[str] = asyncio.Queue()

    async def on_revoked(msg) -> None:  # type: ignore[no-untyped-def]
        # JSON like every other event on the bus (auth.proto AccessRevokedEvent names the fields).
        ev = json.loads(msg.data)
        if ev["grain_id"] == g:
            got.put_nowait(ev)

    async def on_audit(msg) -> None:  # type: ignore[no-untyped-def]
        if g.encode() in msg.data:
            audit.put_nowait(msg.subject)

    await nc.subscribe("grainhouse.auth.grant.revoked", cb=on_revoked)
    await nc.subscribe("grainhouse.auth.audit.>", cb=on_audit)
    await nc.flush()
    try:
        async with grpc.aio.insecure_channel(auth_stack.auth_addr) as ch:
            astub = auth_pb2_grpc.AuthStub(ch)
            # Narrowing names the narrowed grants.
            await astub.ChangeGrantRole(
                auth_pb2.ChangeGrantRoleRequest(caller=a.cred, grant_id=gb.grant_id, role="viewer")
            )
            ev = await asyncio.wait_for(got.get(), 1.0)
            assert set(ev["grant_ids"]) == {gb.grant_id, gc.grant_id}
            await astub.RevokeGrant(
                auth_pb2.RevokeGrantRequest(caller=a.cred, grant_id=gb.grant_id)
            )
            # Published before the answer: within a second of it at the latest.
            ev = await asyncio.wait_for(got.get(), 1.0)
            assert ev["grant_ids"] == [gb.grant_id, gc.grant_id] and ev["at"]
            assert ev["credential_ids"] == [] and ev["account_id"] == ""
            denied = await astub.Authorize(auth_pb2.AuthorizeRequest(credential=c.cred, grain_id=g))
            assert not denied.allowed
        subjects = []
        while not audit.empty():
            subjects.append(audit.get_nowait())
        assert "grainhouse.auth.audit.share_revoked" in subjects
        assert "grainhouse.auth.audit.share_role_changed" in subjects
    finally:
        await nc.close()


def test_secrets_never_reach_logs_or_metrics(stub, auth_stack: AuthStack) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    a, b = dev_user(stub, admin=True), dev_user(stub)
    g = new_grain(stub, a)
    secrets_seen = [a.session, b.session]
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=a.cred, grain_id=g, role="viewer")
    )
    tok = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(caller=a.cred, name="n", scopes=[auth_pb2.SCOPE_WRITE])
    )
    gtok = stub.CreateGrainApiToken(
        auth_pb2.CreateGrainApiTokenRequest(caller=a.cred, grain_id=g, role="viewer", label="x")
    )
    inv = stub.CreateInvitation(auth_pb2.CreateInvitationRequest(caller=a.cred))
    pw = "a-secret-password-" + unique("p")
    secrets_seen += [
        link.share_link_secret,
        tok.token_secret,
        gtok.token_secret,
        inv.invitation_secret,
        pw,
    ]
    for s in (link.share_link_secret, tok.token_secret, gtok.token_secret):
        authorize(stub, bearer(s), g)
        authorize(stub, link_cred(s), g)
    code_of(
        lambda: stub.LoginPassword(
            auth_pb2.LoginPasswordRequest(email="x@example.org", password=pw)
        )
    )
    code_of(
        lambda: stub.AuthenticateToken(
            auth_pb2.AuthenticateTokenRequest(bearer_secret=tok.token_secret + "x")
        )
    )
    stub.RevokeApiToken(auth_pb2.RevokeApiTokenRequest(caller=a.cred, token_id=tok.token.token_id))
    stub.Logout(auth_pb2.LogoutRequest(session_secret=b.session))
    with urllib.request.urlopen(auth_stack.services["auth"]["metrics"], timeout=10) as resp:
        metrics = resp.read().decode()
    logs = auth_stack.logs()
    assert "grainhouse_rpc" in metrics or "grainhouse_auth" in metrics
    for s in secrets_seen:
        assert s not in logs, "a secret was logged"
        assert s not in metrics, "a secret reached the metrics"
        assert s[4:20] not in logs
