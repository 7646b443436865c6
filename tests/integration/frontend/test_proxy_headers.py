"""X-Forwarded-For is believed from the configured reverse proxies only (frontend setting
`trusted_proxies`): the address auth records for a login (and counts guesses against) is the
client's own otherwise, whatever header the client sends."""

from __future__ import annotations

import grpc
import pytest

from grainhouse_proto import auth_pb2, auth_pb2_grpc

from .harness import Client, Stack

pytestmark = pytest.mark.integration
ADMIN_EMAIL, ADMIN_PASSWORD = "admin@example.org", "correct horse battery"


def login_address(stack: Stack, browser: Client) -> str:
    """Log `browser` in as the admin; the remote_addr auth stored for the new session."""
    reply = browser.form("/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert reply.status == 303, reply.text[:300]
    secret = next(v for k, v in browser.cookies["localhost"].items() if k.endswith("gh_session"))
    with grpc.insecure_channel(stack.status()["services"]["auth"]["grpc"]) as channel:
        got = auth_pb2_grpc.AuthStub(channel).GetSession(
            auth_pb2.GetSessionRequest(session_secret=secret), timeout=10
        )
    return str(got.session.remote_addr)


def test_a_client_cannot_choose_its_address(stack: Stack, admin: Client) -> None:
    spoofer = Client(stack.url, always={"X-Forwarded-For": "203.0.113.50"})
    assert login_address(stack, spoofer) == "127.0.0.1"


def test_a_trusted_proxy_passes_the_client_address_on(stack: Stack, admin: Client) -> None:
    proxy = Client(
        stack.url, source="127.0.0.2", always={"X-Forwarded-For": "198.51.100.1, 203.0.113.51"}
    )
    # The proxy appends the address it saw; whatever the client put before it is not believed.
    assert login_address(stack, proxy) == "203.0.113.51"
