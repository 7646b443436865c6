"""Accounts made and found through the real service: the setup link (by API and by the CLI)
that makes an admin, invitations, and admins listing accounts."""

from __future__ import annotations

import grpc
import pytest

from grainhouse_proto import auth_pb2, common_pb2

from .conftest import (
    PASSWORD,
    PUBLIC_URL,
    AuthStack,
    code_of,
    dev_user,
    invited_user,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode


def setup_link(stub, stack: AuthStack) -> str:  # type: ignore[no-untyped-def]
    r = stub.CreateSetupLink(
        auth_pb2.CreateSetupLinkRequest(
            operator_key=auth_pb2.OperatorKey(key_secret=stack.operator_key),
            base_url="http://localhost:1234",
        ),
        timeout=10,
    )
    assert r.url == f"http://localhost:1234/setup/{r.setup_link_secret}"
    return str(r.setup_link_secret)


def details(email: str, password: str = PASSWORD) -> auth_pb2.NewAccountDetails:
    return auth_pb2.NewAccountDetails(email=email, display_name="Ada", password=password)


def test_setup_link_makes_the_first_admin_once(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    assert (
        code_of(
            lambda: stub.CreateSetupLink(
                auth_pb2.CreateSetupLinkRequest(operator_key=auth_pb2.OperatorKey(key_secret="x"))
            )
        )
        == SC.UNAUTHENTICATED
    )
    secret = setup_link(stub, auth_stack)
    email = f"{unique('admin')}@example.org"
    r = stub.CreateAccount(
        auth_pb2.CreateAccountRequest(setup_link_secret=secret, details=details(email)),
        timeout=10,
    )
    assert r.session.account.is_admin and r.session.session.login_method == "setup"
    got = stub.GetSession(auth_pb2.GetSessionRequest(session_secret=r.session.session_secret))
    assert got.principal.is_admin and got.principal.scope == auth_pb2.SCOPE_ADMIN
    again = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            setup_link_secret=secret, details=details(f"{unique('x')}@example.org")
        )
    )
    assert code_of(again) == SC.NOT_FOUND


def test_redeeming_a_setup_link_promotes_and_rotates_the_session(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    user = invited_user(stub, admin)
    r = stub.RedeemSetupLink(
        auth_pb2.RedeemSetupLinkRequest(
            setup_link_secret=setup_link(stub, auth_stack), caller=user.cred
        ),
        timeout=10,
    )
    assert r.account.is_admin
    assert r.session.session_secret and r.session.session_secret != user.session
    old = lambda: stub.GetSession(auth_pb2.GetSessionRequest(session_secret=user.session))  # noqa: E731
    assert code_of(old) == SC.UNAUTHENTICATED
    new = stub.GetSession(auth_pb2.GetSessionRequest(session_secret=r.session.session_secret))
    assert new.account.is_admin


def test_cli_setup_link_makes_an_admin(stub, auth_stack: AuthStack) -> None:  # type: ignore[no-untyped-def]
    from grainhouse_cli.datadir import DataDir
    from grainhouse_cli.setup_link import create_setup_link

    data = DataDir(auth_stack.data_dir)
    held = data.lock()  # stands in for the `grainhouse up` that owns this directory
    try:
        data.write_state({"url": PUBLIC_URL, "services": {"auth": {"grpc": auth_stack.auth_addr}}})
        link = create_setup_link(data)
    finally:
        held.close()
        data.state_file.unlink(missing_ok=True)
    assert link.url.startswith(PUBLIC_URL + "/setup/ghx_")
    secret = link.url.rsplit("/", 1)[1]
    r = stub.CreateAccount(
        auth_pb2.CreateAccountRequest(
            setup_link_secret=secret, details=details(f"{unique('cli')}@example.org")
        )
    )
    assert r.session.account.is_admin


def test_invitations_are_admin_only_single_use_and_bound_to_their_email(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    plain = dev_user(stub)
    refused = lambda: stub.CreateInvitation(  # noqa: E731
        auth_pb2.CreateInvitationRequest(caller=plain.cred)
    )
    assert code_of(refused) == SC.PERMISSION_DENIED
    email = f"{unique('inv')}@example.org"
    inv = stub.CreateInvitation(
        auth_pb2.CreateInvitationRequest(caller=admin.cred, email=email, base_url="http://h")
    )
    assert inv.url == f"http://h/invite/{inv.invitation_secret}"
    wrong = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv.invitation_secret, details=details("other@example.org")
        )
    )
    assert code_of(wrong) == SC.PERMISSION_DENIED
    weak = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv.invitation_secret, details=details(email, "password1234")
        )
    )
    assert code_of(weak) == SC.INVALID_ARGUMENT
    # The failures above did not use the invitation up.
    ok = stub.CreateAccount(
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv.invitation_secret, details=details(email.upper())
        )
    )
    assert ok.session.account.email == email and not ok.session.account.is_admin
    again = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv.invitation_secret, details=details(email)
        )
    )
    assert code_of(again) == SC.NOT_FOUND
    # An email already taken answers ALREADY_EXISTS.
    inv2 = stub.CreateInvitation(auth_pb2.CreateInvitationRequest(caller=admin.cred))
    dup = lambda: stub.CreateAccount(  # noqa: E731
        auth_pb2.CreateAccountRequest(
            invitation_secret=inv2.invitation_secret, details=details(email)
        )
    )
    assert code_of(dup) == SC.ALREADY_EXISTS


def test_list_accounts_pages_for_admins(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    seen: list[str] = []
    token = ""
    while True:
        r = stub.ListAccounts(
            auth_pb2.ListAccountsRequest(
                caller=admin.cred, page=common_pb2.PageRequest(page_size=2, page_token=token)
            )
        )
        assert len(r.accounts) <= 2
        seen += [a.account_id for a in r.accounts]
        token = r.page.next_page_token
        if not token:
            break
    assert admin.account_id in seen and len(seen) == len(set(seen))
    assert (
        code_of(lambda: stub.ListAccounts(auth_pb2.ListAccountsRequest(caller=dev_user(stub).cred)))
        == SC.PERMISSION_DENIED
    )


def test_list_accounts_finds_one_account_by_id(stub) -> None:  # type: ignore[no-untyped-def]
    admin = dev_user(stub, admin=True)
    other = dev_user(stub, name=unique("Findable"))

    def by_id(account_id: str, query: str = "") -> list[str]:
        r = stub.ListAccounts(
            auth_pb2.ListAccountsRequest(caller=admin.cred, account_id=account_id, query=query)
        )
        assert r.page.next_page_token == ""
        return [a.account_id for a in r.accounts]

    assert by_id(other.account_id) == [other.account_id]
    assert by_id(other.account_id, query="findable") == [other.account_id]
    assert by_id(other.account_id, query="no such name") == []  # both filters apply
    assert by_id("acct-that-does-not-exist") == []
    assert by_id("'; DROP TABLE accounts; --") == []
    assert by_id(admin.account_id) == [admin.account_id]
