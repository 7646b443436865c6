"""Logins through the real service: password, TOTP, email link, dev login, sessions,
personal API tokens, the logins counter, and brute-force limits. (Setup links, invitations
and the account list: test_enrolment.py.)"""

from __future__ import annotations

import re
import time
import urllib.request

import grpc
import pyotp
import pytest

from grainhouse_proto import auth_pb2

from .conftest import (
    PASSWORD,
    PUBLIC_URL,
    AuthStack,
    bearer,
    code_of,
    dev_user,
    invited_user,
    session_cred,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode


def logins_counted(stack: AuthStack, method: str, factor: str = "none") -> float:
    """grainhouse_auth_logins_total{method, second_factor} as auth's /metrics shows it now."""
    with urllib.request.urlopen(stack.services["auth"]["metrics"], timeout=10) as resp:
        text = resp.read().decode()
    want = f'grainhouse_auth_logins_total{{method="{method}",second_factor="{factor}"}} '
    return sum(float(line[len(want) :]) for line in text.splitlines() if line.startswith(want))


def test_successful_logins_are_counted_by_method(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)  # an invitation redeemed: one "invitation" login
    before = logins_counted(auth_stack, "password")
    dev_before = logins_counted(auth_stack, "dev")
    stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
    failed = lambda: stub.LoginPassword(  # noqa: E731
        auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD + "x")
    )
    assert code_of(failed) == SC.UNAUTHENTICATED  # a failure is not a login
    dev_user(stub)
    assert logins_counted(auth_stack, "password") == before + 1
    assert logins_counted(auth_stack, "dev") == dev_before + 1
    assert logins_counted(auth_stack, "invitation") >= 1


def test_password_login_sessions_and_logout(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    client = auth_pb2.ClientInfo(remote_addr="192.0.2.10", user_agent="pytest")
    a = stub.LoginPassword(
        auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD, client=client)
    )
    b = stub.LoginPassword(
        auth_pb2.LoginPasswordRequest(email=f" {user.email.upper()} ", password=PASSWORD)
    )
    # A new session id and secret on every login.
    assert a.session.session.session_id != b.session.session.session_id
    assert a.session.session.login_method == "password"
    assert a.session.session.remote_addr == "192.0.2.10"
    assert a.session.session.idle_expires_at.ToDatetime() <= (
        a.session.session.absolute_expires_at.ToDatetime()
    )
    for email, pw in ((user.email, PASSWORD + "x"), ("nobody@example.org", PASSWORD)):
        bad = lambda e=email, p=pw: stub.LoginPassword(  # noqa: E731
            auth_pb2.LoginPasswordRequest(email=e, password=p)
        )
        assert code_of(bad) == SC.UNAUTHENTICATED
    stub.Logout(auth_pb2.LogoutRequest(session_secret=a.session.session_secret))
    stub.Logout(auth_pb2.LogoutRequest(session_secret=a.session.session_secret))  # idempotent
    gone = lambda: stub.GetSession(  # noqa: E731
        auth_pb2.GetSessionRequest(session_secret=a.session.session_secret)
    )
    assert code_of(gone) == SC.UNAUTHENTICATED
    alive = stub.GetSession(
        auth_pb2.GetSessionRequest(session_secret=b.session.session_secret, touch=True)
    )
    assert alive.session.last_seen_at.ToDatetime() >= b.session.session.last_seen_at.ToDatetime()


def test_change_password_ends_the_other_sessions(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    other = stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
    wrong = lambda: stub.ChangePassword(  # noqa: E731
        auth_pb2.ChangePasswordRequest(
            caller=user.cred, old_password="nope", new_password="another-long-phrase-91"
        )
    )
    assert code_of(wrong) == SC.UNAUTHENTICATED
    stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            caller=user.cred, old_password=PASSWORD, new_password="another-long-phrase-91"
        )
    )
    stub.GetSession(auth_pb2.GetSessionRequest(session_secret=user.session))
    ended = lambda: stub.GetSession(  # noqa: E731
        auth_pb2.GetSessionRequest(session_secret=other.session.session_secret)
    )
    assert code_of(ended) == SC.UNAUTHENTICATED
    stub.LoginPassword(
        auth_pb2.LoginPasswordRequest(email=user.email, password="another-long-phrase-91")
    )


def test_totp_second_factor_with_replay_protection_and_recovery_codes(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    enrol = stub.EnrollTotp(auth_pb2.EnrollTotpRequest(caller=user.cred))
    assert enrol.otpauth_uri.startswith("otpauth://totp/")
    otp = pyotp.TOTP(enrol.totp_secret)
    now = time.time()
    wrong = lambda: stub.ConfirmTotp(  # noqa: E731
        auth_pb2.ConfirmTotpRequest(
            caller=user.cred, totp_code="000000" if otp.at(now) != "000000" else "111111"
        )
    )
    assert code_of(wrong) == SC.UNAUTHENTICATED
    codes = stub.ConfirmTotp(
        auth_pb2.ConfirmTotpRequest(caller=user.cred, totp_code=otp.at(now - 30))
    ).recovery_codes
    assert len(codes) == 10 and len(set(codes)) == 10

    def challenge() -> str:
        r = stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
        assert r.WhichOneof("outcome") == "second_factor"
        return str(r.second_factor.challenge_secret)

    ch = challenge()
    code = otp.at(now + 30)  # a later step than the one used to confirm
    done = stub.VerifyTotp(auth_pb2.VerifyTotpRequest(challenge_secret=ch, totp_code=code))
    assert done.session.session.login_method == "password+totp"
    assert done.session.account.totp_enabled
    replay = lambda: stub.VerifyTotp(  # noqa: E731
        auth_pb2.VerifyTotpRequest(challenge_secret=challenge(), totp_code=code)
    )
    assert code_of(replay) == SC.UNAUTHENTICATED
    ch = challenge()
    ok = stub.VerifyTotp(auth_pb2.VerifyTotpRequest(challenge_secret=ch, recovery_code=codes[0]))
    assert ok.session.session_secret
    used = lambda: stub.VerifyTotp(  # noqa: E731
        auth_pb2.VerifyTotpRequest(challenge_secret=challenge(), recovery_code=codes[0])
    )
    assert code_of(used) == SC.UNAUTHENTICATED
    stub.DisableTotp(auth_pb2.DisableTotpRequest(caller=user.cred, recovery_code=codes[2]))
    plain = stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
    assert plain.WhichOneof("outcome") == "session"


def test_five_wrong_codes_end_a_challenge(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    otp = pyotp.TOTP(stub.EnrollTotp(auth_pb2.EnrollTotpRequest(caller=user.cred)).totp_secret)
    codes = stub.ConfirmTotp(
        auth_pb2.ConfirmTotpRequest(caller=user.cred, totp_code=otp.now())
    ).recovery_codes
    r = stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
    ch = r.second_factor.challenge_secret
    results = [
        code_of(
            lambda: stub.VerifyTotp(
                auth_pb2.VerifyTotpRequest(challenge_secret=ch, recovery_code="bad-code")
            )
        )
        for _ in range(5)
    ]
    assert results == [SC.UNAUTHENTICATED] * 4 + [SC.RESOURCE_EXHAUSTED]
    # The challenge is gone: even a right recovery code no longer works on it.
    after = lambda: stub.VerifyTotp(  # noqa: E731
        auth_pb2.VerifyTotpRequest(challenge_secret=ch, recovery_code=codes[0])
    )
    assert code_of(after) == SC.UNAUTHENTICATED


def test_email_login_link_is_logged_in_dev_mode_and_works_once(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    public = _public_url(auth_stack)
    stub.StartEmailLogin(
        auth_pb2.StartEmailLoginRequest(email=user.email, link_base_url=public + "/login/email")
    )
    # Unknown addresses get the same answer (their link makes a visitor: test_visitors).
    stub.StartEmailLogin(
        auth_pb2.StartEmailLoginRequest(
            email="nobody-here@example.org", link_base_url=public + "/login/email"
        )
    )
    foreign = lambda: stub.StartEmailLogin(  # noqa: E731
        auth_pb2.StartEmailLoginRequest(email=user.email, link_base_url="https://evil.example")
    )
    assert code_of(foreign) == SC.INVALID_ARGUMENT
    code = _logged_code(auth_stack, user.email)
    r = stub.FinishEmailLogin(auth_pb2.FinishEmailLoginRequest(code=code))
    assert r.session.session.login_method == "email"
    again = lambda: stub.FinishEmailLogin(auth_pb2.FinishEmailLoginRequest(code=code))  # noqa: E731
    assert code_of(again) == SC.UNAUTHENTICATED


def _public_url(stack: AuthStack) -> str:
    return PUBLIC_URL


def _logged_code(stack: AuthStack, email: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in stack.auth_log().splitlines():
            if '"to": "' + email + '"' in line:
                found = re.search(r"code=(ghx_[A-Za-z0-9_-]+)", line)
                if found:
                    return found.group(1)
        time.sleep(0.1)
    raise AssertionError("no login link in the auth log")


def test_dev_login_reuses_the_dev_account(stub) -> None:  # type: ignore[no-untyped-def]
    name = unique("Dev Dana")
    a = dev_user(stub, name)
    b = dev_user(stub, name)
    assert a.account_id == b.account_id and a.session != b.session


def test_personal_api_tokens_scopes_list_and_revoke(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    no_admin = lambda: stub.CreateApiToken(  # noqa: E731
        auth_pb2.CreateApiTokenRequest(caller=user.cred, name="x", scopes=[auth_pb2.SCOPE_ADMIN])
    )
    assert code_of(no_admin) == SC.PERMISSION_DENIED
    read = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(
            caller=user.cred, name="reader", scopes=[auth_pb2.SCOPE_READ], ttl_seconds=3600
        )
    )
    assert read.token_secret.startswith("ghp_")
    who = stub.AuthenticateToken(auth_pb2.AuthenticateTokenRequest(bearer_secret=read.token_secret))
    assert who.principal.account_id == user.account_id
    assert who.principal.scope == auth_pb2.SCOPE_READ and not who.principal.is_admin
    escalate = lambda: stub.CreateApiToken(  # noqa: E731
        auth_pb2.CreateApiTokenRequest(
            caller=bearer(read.token_secret), name="w", scopes=[auth_pb2.SCOPE_WRITE]
        )
    )
    assert code_of(escalate) == SC.PERMISSION_DENIED
    # Scopes are ordered: a write token may mint a read token (write implies read).
    writer = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(
            caller=user.cred, name="writer", scopes=[auth_pb2.SCOPE_WRITE], ttl_seconds=3600
        )
    )
    narrower = stub.CreateApiToken(
        auth_pb2.CreateApiTokenRequest(
            caller=bearer(writer.token_secret),
            name="r2",
            scopes=[auth_pb2.SCOPE_READ],
            ttl_seconds=600,
        )
    )
    assert narrower.token.scopes == [auth_pb2.SCOPE_READ]
    stub.RevokeApiToken(
        auth_pb2.RevokeApiTokenRequest(caller=user.cred, token_id=narrower.token.token_id)
    )
    stub.RevokeApiToken(
        auth_pb2.RevokeApiTokenRequest(caller=user.cred, token_id=writer.token.token_id)
    )
    outlive = lambda: stub.CreateApiToken(  # noqa: E731
        auth_pb2.CreateApiTokenRequest(
            caller=bearer(read.token_secret),
            name="r",
            scopes=[auth_pb2.SCOPE_READ],
            ttl_seconds=7200,
        )
    )
    assert code_of(outlive) == SC.PERMISSION_DENIED
    listed = stub.ListApiTokens(auth_pb2.ListApiTokensRequest(caller=bearer(read.token_secret)))
    assert [t.token_id for t in listed.tokens] == [read.token.token_id]
    assert all(read.token_secret not in str(t) for t in listed.tokens)
    revoke_by_reader = lambda: stub.RevokeApiToken(  # noqa: E731
        auth_pb2.RevokeApiTokenRequest(
            caller=bearer(read.token_secret), token_id=read.token.token_id
        )
    )
    assert code_of(revoke_by_reader) == SC.PERMISSION_DENIED
    stranger = dev_user(stub)
    hidden = lambda: stub.RevokeApiToken(  # noqa: E731
        auth_pb2.RevokeApiTokenRequest(caller=stranger.cred, token_id=read.token.token_id)
    )
    assert code_of(hidden) == SC.NOT_FOUND
    stub.RevokeApiToken(
        auth_pb2.RevokeApiTokenRequest(caller=user.cred, token_id=read.token.token_id)
    )
    dead = lambda: stub.AuthenticateToken(  # noqa: E731
        auth_pb2.AuthenticateTokenRequest(bearer_secret=read.token_secret)
    )
    assert code_of(dead) == SC.UNAUTHENTICATED
    # Admins may list anyone's tokens; others may not.
    stub.ListApiTokens(auth_pb2.ListApiTokensRequest(caller=admin.cred, account_id=user.account_id))
    other = lambda: stub.ListApiTokens(  # noqa: E731
        auth_pb2.ListApiTokensRequest(caller=stranger.cred, account_id=user.account_id)
    )
    assert code_of(other) == SC.PERMISSION_DENIED


def test_brute_force_is_slowed_then_blocked_per_account_and_address(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    addr = f"198.51.100.{int.from_bytes(unique('a').encode()[-2:], 'big') % 250}"
    client = auth_pb2.ClientInfo(remote_addr=addr)

    def attempt(password: str, email: str = user.email) -> grpc.StatusCode:
        try:
            stub.LoginPassword(
                auth_pb2.LoginPasswordRequest(email=email, password=password, client=client)
            )
            return SC.OK
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]

    # Settings of this stack: 5 free failures, then a 4 s wait (slowed), blocked at the 7th.
    assert [attempt("wrong-guess-000") for _ in range(6)] == [SC.UNAUTHENTICATED] * 6
    assert attempt(PASSWORD) == SC.RESOURCE_EXHAUSTED  # slowed: even the right password waits
    failures = 6
    deadline = time.monotonic() + 60
    while failures < 7 and time.monotonic() < deadline:
        result = attempt("wrong-guess-000")
        if result == SC.UNAUTHENTICATED:
            failures += 1
        else:
            assert result == SC.RESOURCE_EXHAUSTED
            time.sleep(0.3)
    assert failures == 7
    # Blocked now: the right password, and other accounts from the same address, are refused.
    err = None
    try:
        stub.LoginPassword(auth_pb2.LoginPasswordRequest(email=user.email, password=PASSWORD))
    except grpc.RpcError as exc:
        err = exc
    assert err is not None and err.code() == SC.RESOURCE_EXHAUSTED
    wait = int(re.search(r"(\d+) s", err.details()).group(1))  # type: ignore[union-attr]
    assert wait > 60  # the block (600 s here), not a short backoff
    assert attempt(PASSWORD, email="someone-else@example.org") == SC.RESOURCE_EXHAUSTED


def test_dev_login_refused_without_dev_mode_is_documented(stub) -> None:  # type: ignore[no-untyped-def]
    # This stack runs in dev mode; the refusal itself is covered by the unit suite of logins.
    r = stub.DevLogin(auth_pb2.DevLoginRequest(display_name=unique("d")))
    assert r.session.session.login_method == "dev"
    assert session_cred(r.session.session_secret).session_secret.startswith("ghs_")
