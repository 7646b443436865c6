"""Grain origins through the real auth service and its PostgreSQL (auth.proto "Grain origins"):
made only for what Authorize allows, stored as a hash, resolved with Authorize's decision,
closed by logout, revocation and idle time, and guarded against guessing like any secret."""

from __future__ import annotations

import hashlib
import re

import grpc
import psycopg
import pytest

from grainhouse_proto import auth_pb2, auth_pb2_grpc

from .conftest import (
    AuthStack,
    authorize,
    code_of,
    dev_user,
    link_cred,
    new_grain,
    session_cred,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode
NORMAL = auth_pb2.ORIGIN_SESSION_TYPE_NORMAL


def _db(auth_stack: AuthStack) -> psycopg.Connection:  # type: ignore[type-arg]
    url = auth_stack.db_url_file.read_text().strip()
    return psycopg.connect(url, autocommit=True, options="-c search_path=auth")


def create(
    stub: auth_pb2_grpc.AuthStub, cred: auth_pb2.Credential, grain_id: str, tab_id: str = ""
) -> auth_pb2.CreateOriginResponse:
    return stub.CreateOrigin(
        auth_pb2.CreateOriginRequest(
            credential=cred, grain_id=grain_id, tab_id=tab_id, session_type=NORMAL
        ),
        timeout=10,
    )


def resolve(
    stub: auth_pb2_grpc.AuthStub, origin_id: str, addr: str = ""
) -> auth_pb2.ResolveOriginResponse:
    return stub.ResolveOrigin(
        auth_pb2.ResolveOriginRequest(origin_id=origin_id, client_address=addr), timeout=10
    )


def test_an_origin_carries_authorizes_decision_and_is_kept_as_a_hash(
    stub: auth_pb2_grpc.AuthStub, auth_stack: AuthStack
) -> None:
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    made = create(stub, owner.cred, g, tab_id="tab-1")
    assert re.fullmatch(r"[0-9a-f]{32}", made.origin_id) and made.tab_id == "tab-1"
    assert made.idle_seconds == 3600
    got = resolve(stub, made.origin_id)
    assert (got.grain_id, got.tab_id, got.session_type) == (g, "tab-1", NORMAL)
    direct = authorize(stub, owner.cred, g)
    assert got.decision.allowed and got.decision.is_owner
    assert list(got.decision.permissions) == list(direct.permissions) == ["read", "comment", "edit"]
    assert got.decision.identity == direct.identity
    assert got.decision.principal.credential_id == direct.principal.credential_id
    assert got.decision.cache_ttl_seconds == direct.cache_ttl_seconds > 0
    # Auth picks a tab id when none is asked for; every origin is a new one.
    other = create(stub, owner.cred, g)
    assert other.origin_id != made.origin_id and re.fullmatch(r"[0-9a-f]{16}", other.tab_id)
    with _db(auth_stack) as db:
        rows = db.execute(
            "SELECT origin_hash, credential_kind, credential_id FROM origins WHERE grain_id = %s",
            (g,),
        ).fetchall()
        assert len(rows) == 2
        by_hash = {bytes(r[0]): r for r in rows}
        row = by_hash[hashlib.sha256(made.origin_id.encode()).digest()]
        assert row[1:] == ("session", direct.principal.credential_id)
        # The id itself is in no column of the table.
        text = db.execute("SELECT o::text FROM origins o WHERE grain_id = %s", (g,)).fetchall()
        assert not any(made.origin_id in t[0] for t in text)


def test_create_refuses_what_authorize_refuses(stub: auth_pb2_grpc.AuthStub) -> None:
    owner, stranger = dev_user(stub), dev_user(stub)
    g = new_grain(stub, owner)
    assert code_of(lambda: create(stub, stranger.cred, g)) == SC.NOT_FOUND
    assert code_of(lambda: create(stub, owner.cred, "no-such-grain")) == SC.NOT_FOUND
    bad = session_cred("ghs_" + "x" * 43)
    assert code_of(lambda: create(stub, bad, g)) == SC.UNAUTHENTICATED
    assert code_of(lambda: create(stub, owner.cred, g, tab_id="bad tab!")) == SC.INVALID_ARGUMENT
    assert code_of(lambda: create(stub, auth_pb2.Credential(), g)) == SC.INVALID_ARGUMENT


def test_logout_closes_the_origin_for_good(stub: auth_pb2_grpc.AuthStub) -> None:
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    oid = create(stub, owner.cred, g).origin_id
    assert resolve(stub, oid).decision.allowed
    stub.Logout(auth_pb2.LogoutRequest(session_secret=owner.session), timeout=10)
    after = resolve(stub, oid)  # the refusal is told once …
    assert not after.decision.allowed
    assert after.decision.deny_reason == auth_pb2.DENY_REASON_UNAUTHENTICATED
    assert code_of(lambda: resolve(stub, oid)) == SC.NOT_FOUND  # … then the origin is gone


def test_revoking_a_share_link_closes_its_origins_only(stub: auth_pb2_grpc.AuthStub) -> None:
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=owner.cred, grain_id=g, role="viewer"), timeout=10
    )
    guest = create(stub, link_cred(link.share_link_secret), g).origin_id
    mine = create(stub, owner.cred, g).origin_id
    seen = resolve(stub, guest).decision
    assert seen.allowed and list(seen.permissions) == ["read"] and seen.identity.is_anonymous
    assert list(seen.grant_chain) == [link.grant.grant_id]
    stub.RevokeGrant(
        auth_pb2.RevokeGrantRequest(caller=owner.cred, grant_id=link.grant.grant_id), timeout=10
    )
    assert resolve(stub, guest).decision.deny_reason == auth_pb2.DENY_REASON_UNAUTHENTICATED
    assert code_of(lambda: resolve(stub, guest)) == SC.NOT_FOUND
    assert resolve(stub, mine).decision.allowed  # the owner's origin is untouched


def test_idle_unknown_and_malformed_origins(
    stub: auth_pb2_grpc.AuthStub, auth_stack: AuthStack
) -> None:
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    oid = create(stub, owner.cred, g).origin_id
    with _db(auth_stack) as db:
        # Resolving moves the idle timeout forward …
        db.execute(
            "UPDATE origins SET idle_expires_at = now() + interval '5 seconds'"
            " WHERE origin_hash = %s",
            (hashlib.sha256(oid.encode()).digest(),),
        )
        resolve(stub, oid)
        left = db.execute(
            "SELECT extract(epoch FROM idle_expires_at - now()) FROM origins"
            " WHERE origin_hash = %s",
            (hashlib.sha256(oid.encode()).digest(),),
        ).fetchone()
        assert left is not None and left[0] > 3000
        # … and an origin idle past it is gone.
        db.execute(
            "UPDATE origins SET idle_expires_at = now() - interval '1 second'"
            " WHERE origin_hash = %s",
            (hashlib.sha256(oid.encode()).digest(),),
        )
    assert code_of(lambda: resolve(stub, oid)) == SC.NOT_FOUND
    assert code_of(lambda: resolve(stub, "0" * 32)) == SC.NOT_FOUND
    assert code_of(lambda: resolve(stub, "NOT-an-id")) == SC.INVALID_ARGUMENT


def test_unknown_origin_ids_count_as_guesses_ended_ones_do_not(
    stub: auth_pb2_grpc.AuthStub,
) -> None:
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    oid = create(stub, owner.cred, g).origin_id
    stub.Logout(auth_pb2.LogoutRequest(session_secret=owner.session), timeout=10)
    resolve(stub, oid)  # closes it
    old_tab, guesser = "198.51.100.71", "198.51.100.72"
    # A browser coming back to an ended origin many times is not guessing.
    assert [code_of(lambda: resolve(stub, oid, old_tab)) for _ in range(8)] == [SC.NOT_FOUND] * 8
    # Ids that were never issued are: five free, then the address must wait.
    codes = [
        code_of(lambda i=i: resolve(stub, f"{i:032x}", guesser))  # type: ignore[misc]
        for i in range(1, 8)
    ]
    assert codes[:6] == [SC.NOT_FOUND] * 6 and codes[6] == SC.RESOURCE_EXHAUSTED
