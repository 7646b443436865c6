"""Token-guess limits per address, visitors (no invitation ⇒ no grains), and housekeeping.

Through the real auth service (conftest: PostgreSQL, NATS, auth in dev mode with small limits:
5 free failures, then 4 s waits, blocked for 600 s from the 7th; housekeeping every second).
Each test uses its own made-up client address, so the limits of one never touch another.
"""

from __future__ import annotations

import re
import time

import grpc
import psycopg
import pytest

from grainhouse_proto import auth_pb2, auth_pb2_grpc

from .conftest import (
    PUBLIC_URL,
    AuthStack,
    code_of,
    dev_user,
    invited_user,
    link_cred,
    new_grain,
    session_cred,
    unique,
)
from .test_sharing import grant

pytestmark = pytest.mark.integration
SC = grpc.StatusCode
BAD_TOKEN = "ghp_" + "A" * 43
BAD_LINK = "ghl_" + "B" * 43


def _details(exc: grpc.RpcError) -> str:
    return str(exc.details())  # type: ignore[attr-defined]


def _authenticate(stub: auth_pb2_grpc.AuthStub, secret: str, addr: str) -> auth_pb2.Principal:
    return stub.AuthenticateToken(
        auth_pb2.AuthenticateTokenRequest(bearer_secret=secret, client_address=addr), timeout=10
    ).principal


def _authorize(
    stub: auth_pb2_grpc.AuthStub, cred: auth_pb2.Credential, grain_id: str, addr: str
) -> auth_pb2.AuthorizeResponse:
    return stub.Authorize(
        auth_pb2.AuthorizeRequest(credential=cred, grain_id=grain_id, client_address=addr),
        timeout=10,
    )


def _token(stub: auth_pb2_grpc.AuthStub, owner_session: str) -> str:
    return stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(
            caller=session_cred(owner_session), name="t", scopes=[auth_pb2.SCOPE_READ]
        ),
        timeout=10,
    ).token_secret


def test_bearer_guesses_slow_then_block_one_address_only(stub) -> None:  # type: ignore[no-untyped-def]
    user = dev_user(stub)
    good = _token(stub, user.session)
    guesser, other = "198.51.100.1", "198.51.100.2"
    # A success counts nothing: many good uses from the guesser's address first.
    for _ in range(8):
        assert _authenticate(stub, good, guesser).credential_id
    results = [code_of(lambda: _authenticate(stub, BAD_TOKEN, guesser)) for _ in range(6)]
    assert results == [SC.UNAUTHENTICATED] * 6  # five free, the sixth imposes a wait
    # Slowed: the next try, even with the right token, waits.
    with pytest.raises(grpc.RpcError) as slowed:
        _authenticate(stub, good, guesser)
    assert slowed.value.code() == SC.RESOURCE_EXHAUSTED
    assert re.search(r"try again in [1-4] s", _details(slowed.value))
    # Another address is not affected, with the good token or a bad one.
    assert _authenticate(stub, good, other).credential_id
    assert code_of(lambda: _authenticate(stub, BAD_TOKEN, other)) == SC.UNAUTHENTICATED
    # An internal caller (no address) is not limited.
    assert _authenticate(stub, good, "").credential_id
    # After the wait, one more failure blocks the address for the block period.
    deadline = time.monotonic() + 15
    while True:
        try:
            _authenticate(stub, BAD_TOKEN, guesser)
        except grpc.RpcError as exc:
            if exc.code() == SC.UNAUTHENTICATED:
                break
            assert exc.code() == SC.RESOURCE_EXHAUSTED and time.monotonic() < deadline
        time.sleep(0.5)
    with pytest.raises(grpc.RpcError) as blocked:
        _authenticate(stub, good, guesser)
    assert blocked.value.code() == SC.RESOURCE_EXHAUSTED
    wait = int(re.search(r"try again in (\d+) s", _details(blocked.value)).group(1))  # type: ignore[union-attr]
    assert 500 < wait <= 600


def test_stale_credentials_are_not_guesses(stub) -> None:  # type: ignore[no-untyped-def]
    """A revoked token or an ended session is refused but costs its address nothing: a script
    retrying with an old token must not lock out everyone behind the same address."""
    user, gone = dev_user(stub), dev_user(stub)
    good, revoked = _token(stub, user.session), _token(stub, user.session)
    token_id = stub.AuthenticateToken(
        auth_pb2.AuthenticateTokenRequest(bearer_secret=revoked)
    ).principal.credential_id
    stub.RevokeApiToken(auth_pb2.RevokeApiTokenRequest(caller=user.cred, token_id=token_id))
    stub.Logout(auth_pb2.LogoutRequest(session_secret=gone.session))
    addr = "198.51.100.21"
    for _ in range(10):
        assert code_of(lambda: _authenticate(stub, revoked, addr)) == SC.UNAUTHENTICATED
        old_cookie = lambda: stub.GetSession(  # noqa: E731
            auth_pb2.GetSessionRequest(session_secret=gone.session, client_address=addr)
        )
        assert code_of(old_cookie) == SC.UNAUTHENTICATED
    assert _authenticate(stub, good, addr).credential_id


def test_share_link_and_session_guesses_count_too(stub) -> None:  # type: ignore[no-untyped-def]
    owner, friend = dev_user(stub), dev_user(stub)
    g = new_grain(stub, owner)
    link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=owner.cred, grain_id=g, role="viewer"), timeout=10
    ).share_link_secret
    guesser, other = "198.51.100.11", "198.51.100.12"
    # Unknown links answer "not allowed" (an answer, not an error) but each one counts.
    for _ in range(6):
        denied = _authorize(stub, link_cred(BAD_LINK), g, guesser)
        assert denied.deny_reason == auth_pb2.DENY_REASON_UNAUTHENTICATED
    for attempt in (
        lambda: _authorize(stub, link_cred(link), g, guesser),  # the real link, refused
        lambda: stub.RedeemShareLink(
            auth_pb2.RedeemShareLinkRequest(
                caller=friend.cred, share_link_secret=link, client_address=guesser
            )
        ),
        lambda: stub.GetSession(
            auth_pb2.GetSessionRequest(session_secret=friend.session, client_address=guesser)
        ),
    ):
        assert code_of(attempt) == SC.RESOURCE_EXHAUSTED
    assert _authorize(stub, link_cred(link), g, other).allowed

    # RedeemShareLink: a wrong link (NOT_FOUND) and a wrong session count as guesses as well.
    third = "198.51.100.13"
    for _ in range(3):
        wrong_link = lambda: stub.RedeemShareLink(  # noqa: E731
            auth_pb2.RedeemShareLinkRequest(
                caller=friend.cred, share_link_secret=BAD_LINK, client_address=third
            )
        )
        assert code_of(wrong_link) == SC.NOT_FOUND
        bad_cookie = lambda: stub.GetSession(  # noqa: E731
            auth_pb2.GetSessionRequest(session_secret="ghs_" + "C" * 43, client_address=third)
        )
        assert code_of(bad_cookie) == SC.UNAUTHENTICATED
    keep = lambda: stub.RedeemShareLink(  # noqa: E731
        auth_pb2.RedeemShareLinkRequest(
            caller=friend.cred, share_link_secret=link, client_address=third
        )
    )
    assert code_of(keep) == SC.RESOURCE_EXHAUSTED
    kept = stub.RedeemShareLink(
        auth_pb2.RedeemShareLinkRequest(
            caller=friend.cred, share_link_secret=link, client_address=other
        )
    )
    assert kept.grain_id == g


def _codes(auth_stack: AuthStack, email: str) -> list[str]:
    found = []
    for line in auth_stack.auth_log().splitlines():
        if '"to": "' + email + '"' in line:
            found += re.findall(r"code=(ghx_[A-Za-z0-9_-]+)", line)
    return found


def _email_account(stub, auth_stack: AuthStack, email: str) -> auth_pb2.LoginResult:  # type: ignore[no-untyped-def]
    before = len(_codes(auth_stack, email))
    stub.StartEmailLogin(
        auth_pb2.StartEmailLoginRequest(email=email, link_base_url=PUBLIC_URL + "/login/email")
    )
    deadline = time.monotonic() + 10
    while len(codes := _codes(auth_stack, email)) <= before:
        assert time.monotonic() < deadline, "no login link in the auth log"
        time.sleep(0.1)
    return stub.FinishEmailLogin(auth_pb2.FinishEmailLoginRequest(code=codes[-1]))


def test_an_uninvited_email_login_makes_a_visitor_who_opens_shares(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    email = f"{unique('visitor')}@example.org"
    first = _email_account(stub, auth_stack, email)
    account = first.session.account
    assert account.email == email and account.is_visitor and not account.can_create_grains
    visitor_secret = first.session.session_secret
    seen = stub.GetSession(auth_pb2.GetSessionRequest(session_secret=visitor_secret)).account
    assert not seen.can_create_grains
    # A token of a visitor carries the same answer.
    token = _token(stub, visitor_secret)
    authn = stub.AuthenticateToken(auth_pb2.AuthenticateTokenRequest(bearer_secret=token))
    assert authn.account.is_visitor and not authn.account.can_create_grains
    # A second link logs into the same account (no second account).
    again = _email_account(stub, auth_stack, email)
    assert again.session.account.account_id == account.account_id

    # What is shared with a visitor opens.
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    grant(stub, owner, g, account.account_id, "viewer")
    assert stub.Authorize(
        auth_pb2.AuthorizeRequest(credential=session_cred(visitor_secret), grain_id=g)
    ).allowed

    # An invited account and a dev account are full users.
    invited = invited_user(stub, admin)
    assert stub.GetSession(
        auth_pb2.GetSessionRequest(session_secret=invited.session)
    ).account.can_create_grains
    assert stub.GetSession(
        auth_pb2.GetSessionRequest(session_secret=owner.session)
    ).account.can_create_grains

    # Only an admin promotes; then the visitor may create grains. Admins are never visitors.
    promote = auth_pb2.SetAccountVisitorRequest(account_id=account.account_id, visitor=False)
    promote.caller.CopyFrom(invited.cred)
    assert code_of(lambda: stub.SetAccountVisitor(promote)) == SC.PERMISSION_DENIED
    promote.caller.CopyFrom(admin.cred)
    done = stub.SetAccountVisitor(promote).account
    assert done.can_create_grains and not done.is_visitor
    assert stub.GetSession(
        auth_pb2.GetSessionRequest(session_secret=visitor_secret)
    ).account.can_create_grains
    demote_admin = auth_pb2.SetAccountVisitorRequest(
        caller=admin.cred, account_id=admin.account_id, visitor=True
    )
    assert code_of(lambda: stub.SetAccountVisitor(demote_admin)) == SC.FAILED_PRECONDITION


def _db(auth_stack: AuthStack) -> psycopg.Connection:  # type: ignore[type-arg]
    url = auth_stack.db_url_file.read_text().strip()
    return psycopg.connect(url, autocommit=True, options="-c search_path=auth")


def _wait_gone(auth_stack: AuthStack, query: str, params: tuple[object, ...]) -> None:
    deadline = time.monotonic() + 20
    with _db(auth_stack) as conn:
        while conn.execute(query, params).fetchone() is not None:
            assert time.monotonic() < deadline, f"still there: {query} {params}"
            time.sleep(0.2)


def test_housekeeping_deletes_expired_and_ended_rows(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    expired, ended, alive = dev_user(stub), dev_user(stub), dev_user(stub)
    ids = {
        u.session: stub.GetSession(
            auth_pb2.GetSessionRequest(session_secret=u.session)
        ).session.session_id
        for u in (expired, ended, alive)
    }
    owner = dev_user(stub)
    g = new_grain(stub, owner)
    old_link = stub.CreateShareLink(
        auth_pb2.CreateShareLinkRequest(caller=owner.cred, grain_id=g, role="viewer"), timeout=10
    ).grant.grant_id
    stub.Logout(auth_pb2.LogoutRequest(session_secret=ended.session))
    with _db(auth_stack) as conn:
        # Dead longer than the grace period (7 days): stale cookies younger than that are kept
        # so that they do not count as guesses.
        conn.execute(
            "UPDATE sessions SET idle_expires_at = now() - interval '8 days' WHERE session_id = %s",
            (ids[expired.session],),
        )
        conn.execute(
            "UPDATE sessions SET ended_at = now() - interval '8 days' WHERE session_id = %s",
            (ids[ended.session],),
        )
        # A share link that expired long ago (past the 7-day grace period).
        conn.execute(
            "UPDATE grants SET expires_at = now() - interval '8 days' WHERE grant_id = %s",
            (old_link,),
        )
    _wait_gone(auth_stack, "SELECT 1 FROM sessions WHERE session_id = %s", (ids[expired.session],))
    _wait_gone(auth_stack, "SELECT 1 FROM sessions WHERE session_id = %s", (ids[ended.session],))
    _wait_gone(auth_stack, "SELECT 1 FROM grants WHERE grant_id = %s", (old_link,))
    with _db(auth_stack) as conn:
        # A live session stays, and still works.
        live = conn.execute(
            "SELECT 1 FROM sessions WHERE session_id = %s", (ids[alive.session],)
        ).fetchone()
        assert live is not None
    assert stub.GetSession(auth_pb2.GetSessionRequest(session_secret=alive.session)).session
    assert code_of(
        lambda: stub.GetSession(auth_pb2.GetSessionRequest(session_secret=expired.session))
    ) == (SC.UNAUTHENTICATED)
