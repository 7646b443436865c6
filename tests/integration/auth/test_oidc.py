"""OpenID Connect logins against a real local provider (Authlib's server side, own process)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request

import grpc
import pytest

from grainhouse_proto import auth_pb2

from .conftest import OIDC_REDIRECT, AuthStack, code_of, dev_user, unique

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("auth-stack")]
SC = grpc.StatusCode


def browse(url: str) -> dict[str, str]:
    """Act as the browser at the provider: returns the callback's query parameters."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}")
    resp = conn.getresponse()
    location = resp.getheader("Location", "")
    conn.close()
    assert resp.status in (302, 303), resp.status
    assert location.startswith(OIDC_REDIRECT + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def as_user(stack: AuthStack, user: dict[str, object]) -> None:
    req = urllib.request.Request(
        stack.oidc_issuer + "/test/user",
        data=json.dumps(user).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def login(stub, invitation: str = ""):  # type: ignore[no-untyped-def]
    start = stub.StartOidcLogin(
        auth_pb2.StartOidcLoginRequest(
            provider="corp", redirect_uri=OIDC_REDIRECT, invitation_secret=invitation
        )
    )
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(start.authorization_url).query)
    assert params["code_challenge_method"] == ["S256"] and params["nonce"][0]
    assert params["state"] == [start.state_secret]
    back = browse(start.authorization_url)
    request = auth_pb2.FinishOidcLoginRequest(
        provider="corp",
        state_secret=start.state_secret,
        callback_state_secret=back["state"],
        code=back["code"],
        redirect_uri=OIDC_REDIRECT,
    )
    return request


def test_oidc_needs_an_invitation_then_logs_the_linked_account_in(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    sub = unique("sub")
    email = f"{sub}@corp.example"
    as_user(auth_stack, {"sub": sub, "email": email, "email_verified": True, "name": "Oidc Ada"})
    stranger = login(stub)
    assert code_of(lambda: stub.FinishOidcLogin(stranger)) == SC.PERMISSION_DENIED

    admin = dev_user(stub, admin=True)
    inv = stub.CreateInvitation(auth_pb2.CreateInvitationRequest(caller=admin.cred, email=email))
    first = stub.FinishOidcLogin(login(stub, inv.invitation_secret))
    account = first.session.account
    assert account.email == email and account.display_name == "Oidc Ada"
    assert first.session.session.login_method == "oidc:corp" and not account.has_password

    again_req = login(stub)
    again = stub.FinishOidcLogin(again_req)
    assert again.session.account.account_id == account.account_id
    # The state is single use: the same callback cannot log in twice.
    assert code_of(lambda: stub.FinishOidcLogin(again_req)) == SC.PERMISSION_DENIED


def test_oidc_refuses_forged_state_bad_codes_and_unknown_providers(stub, auth_stack) -> None:  # type: ignore[no-untyped-def]
    as_user(auth_stack, {"sub": unique("s"), "email": "x@corp.example", "email_verified": True})
    req = login(stub)
    forged = auth_pb2.FinishOidcLoginRequest()
    forged.CopyFrom(req)
    forged.callback_state_secret = "ghx_attacker"
    assert code_of(lambda: stub.FinishOidcLogin(forged)) == SC.PERMISSION_DENIED

    bad_code = login(stub)
    bad_code.code = "not-a-code"
    assert code_of(lambda: stub.FinishOidcLogin(bad_code)) == SC.UNAUTHENTICATED

    unknown = lambda: stub.StartOidcLogin(  # noqa: E731
        auth_pb2.StartOidcLoginRequest(provider="nope", redirect_uri=OIDC_REDIRECT)
    )
    assert code_of(unknown) == SC.NOT_FOUND
    unregistered = lambda: stub.StartOidcLogin(  # noqa: E731
        auth_pb2.StartOidcLoginRequest(provider="corp", redirect_uri="https://evil.example/cb")
    )
    assert code_of(unregistered) == SC.INVALID_ARGUMENT
