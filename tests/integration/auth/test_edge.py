"""Auth's decisions as the outside world sees them, through the whole platform (`grainhouse up`).

- Token guesses: auth limits per client address, the frontend fills the address from the
  connection and answers 429 with Retry-After. Addresses differ by binding the client socket to
  other loopback addresses (127.0.0.2, …); 127.0.0.1 (the other tests' address) never guesses.
- Visitors: an account made by an email link without an invitation opens what is shared with
  it but cannot create grains (REST 403 problem+json, no "new grain" form, the form refused).
Stack: dev mode (email links in auth's log), small limits: 3 free failures, then 30 s waits.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.frontend.harness import (
    FRONTEND_ENV,
    Client,
    Stack,
    build_probe,
    install_package,
    make_token,
    running_stack,
    setup_admin,
    sign_up,
)

pytestmark = pytest.mark.integration
EDGE_ENV = {
    **FRONTEND_ENV,
    "GRAINHOUSE_DEV_MODE": "1",
    "GRAINHOUSE_AUTH_LOGIN_FREE_FAILURES": "3",
    "GRAINHOUSE_AUTH_LOGIN_BLOCK_AFTER": "5",
    "GRAINHOUSE_AUTH_LOGIN_BASE_DELAY_SECONDS": "30",
    "GRAINHOUSE_AUTH_LOGIN_MAX_DELAY_SECONDS": "30",
    "GRAINHOUSE_AUTH_LOGIN_BLOCK_SECONDS": "600",
    # No reverse proxy: every loopback address here is a client of its own.
    "GRAINHOUSE_FRONTEND_TRUSTED_PROXIES": "",
}
BAD_TOKEN = "ghp_" + "x" * 43


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(EDGE_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Client:
    return setup_admin(stack)


@pytest.fixture(scope="module")
def admin_api(stack: Stack, admin: Client) -> Client:
    return Client(stack.url, token=make_token(admin))


@pytest.fixture(scope="module")
def grain(admin_api: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    app = install_package(admin_api, build_probe(tmp_path_factory.mktemp("probe")))
    made = admin_api.api("POST", "/grains", {"app_id": app["app_id"], "title": "Edge"})
    assert made.status == 201, made.text
    return str(made.json()["id"])


def from_address(
    stack: Stack, source: str, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET `path` (or a full URL on another host of the platform) from the client address
    `source` (a loopback address other than 127.0.0.1)."""
    parts = urllib.parse.urlsplit(stack.url)
    conn = http.client.HTTPConnection(
        "127.0.0.1", parts.port, timeout=60, source_address=(source, 0)
    )
    headers = {"Host": parts.netloc}
    if path.startswith("http"):  # another host of the platform (the grain API host)
        target = urllib.parse.urlsplit(path)
        headers["Host"], path = target.netloc, target.path or "/"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    finally:
        conn.close()


def test_bearer_guesses_get_429_with_retry_after_for_that_address_only(
    stack: Stack, admin: Client
) -> None:
    good = make_token(admin, "read")
    guesser, other = "127.0.0.2", "127.0.0.3"
    # Successful use counts nothing.
    for _ in range(5):
        assert from_address(stack, guesser, "/api/v1/me", good)[0] == 200
    statuses = [from_address(stack, guesser, "/api/v1/me", BAD_TOKEN)[0] for _ in range(4)]
    assert statuses == [401] * 4  # three free; the fourth makes the address wait
    status, headers, body = from_address(stack, guesser, "/api/v1/me", BAD_TOKEN)
    assert status == 429 and headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(headers["retry-after"]) <= 30, headers
    assert b"try again in" in body
    # The right token from the waiting address is refused too (cached at the edge or not).
    assert from_address(stack, guesser, "/api/v1/me", good)[0] == 429
    # Another address: the good token works, a bad one is an ordinary 401.
    assert from_address(stack, other, "/api/v1/me", good)[0] == 200
    assert from_address(stack, other, "/api/v1/me", BAD_TOKEN)[0] == 401


def test_grain_api_host_guesses_get_429_with_retry_after(
    stack: Stack, admin_api: Client, grain: str
) -> None:
    made = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "viewer", "label": "g"})
    assert made.status == 201, made.text
    good, url = made.json()["token"], made.json()["api_url"]
    guesser, other = "127.0.0.6", "127.0.0.7"
    statuses = [from_address(stack, guesser, url + "/whoami", BAD_TOKEN)[0] for _ in range(4)]
    assert statuses == [401] * 4  # three free; the fourth makes the address wait
    status, headers, body = from_address(stack, guesser, url + "/whoami", BAD_TOKEN)
    assert status == 429, body
    assert 1 <= int(headers["retry-after"]) <= 30, headers
    assert b"try again in" in body
    assert "www-authenticate" not in headers  # no credentials would help now
    # The real token from the waiting address is refused too; from another address it works.
    assert from_address(stack, guesser, url + "/whoami", good)[0] == 429
    assert from_address(stack, other, url + "/whoami", good)[0] == 200


def test_share_link_guesses_are_limited_at_the_edge(
    stack: Stack, admin_api: Client, grain: str
) -> None:
    link = admin_api.api("POST", f"/grains/{grain}/shares", {"role": "viewer"}).json()
    path = urllib.parse.urlsplit(link["url"]).path
    guesser, other = "127.0.0.4", "127.0.0.5"
    for _ in range(4):
        assert from_address(stack, guesser, "/shared/ghl_" + "y" * 43)[0] == 404
    assert from_address(stack, guesser, path)[0] == 429  # the real link, from the guesser
    assert from_address(stack, other, path)[0] == 200


def _email_login(stack: Stack, email: str) -> Client:
    """Sign in by email link as the UI does; dev mode writes the link to auth's log."""
    log = Path(stack.data_dir) / "logs" / "auth.log"
    browser = Client(stack.url)
    sent = browser.form("/login/email", {"email": email}, csrf_from="/login")
    assert sent.status == 303, sent.text[:300]
    deadline = time.monotonic() + 15
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        codes = [
            m
            for line in text.splitlines()
            if f'"to": "{email}"' in line
            for m in re.findall(r"code=(ghx_[A-Za-z0-9_\-]+)", line)
        ]
        if codes:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    done = browser.form(
        "/login/email", {"code": codes[-1]}, csrf_from=f"/login/email?code={codes[-1]}"
    )
    assert done.status == 303, done.text[:300]
    return browser


def test_an_uninvited_account_opens_shares_but_creates_no_grains(
    stack: Stack, admin: Client, admin_api: Client, grain: str
) -> None:
    visitor = _email_login(stack, "walk-in@example.org")
    app_id = admin_api.api("GET", f"/grains/{grain}").json()["app_id"]

    # REST: 403 problem+json; /me says so.
    api = Client(stack.url, token=make_token(visitor, "write"))
    assert api.api("GET", "/me").json()["can_create_grains"] is False
    refused = api.api("POST", "/grains", {"app_id": app_id, "title": "Mine"})
    assert refused.status == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "cannot create grains" in refused.json()["detail"]

    # UI: no "new grain" or "install" forms, a note instead; the form itself is refused.
    apps = visitor.get("/apps")
    assert apps.status == 200
    assert 'id="visitor-note"' in apps.text and f"/apps/{app_id}/new" not in apps.text
    assert 'id="upload-form"' not in apps.text
    assert "New grain</a>" not in visitor.get("/").text
    posted = visitor.form(f"/apps/{app_id}/new", {"action": "0"}, csrf_from="/apps")
    assert posted.status == 403

    # What is shared with the visitor opens.
    link = admin_api.api("POST", f"/grains/{grain}/shares", {"role": "viewer"}).json()
    opened = visitor.get(urllib.parse.urlsplit(link["url"]).path)
    assert opened.status == 303 and opened.headers["location"] == f"/grain/{grain}"
    page = visitor.get(f"/grain/{grain}")
    assert page.status == 200 and "ui-" in page.text

    # An invited account creates grains, by REST and in the UI.
    invited = sign_up(stack, admin, "Ivy Invited", "ivy@example.org")
    assert 'id="visitor-note"' not in invited.get("/apps").text
    ivy = Client(stack.url, token=make_token(invited, "write"))
    assert ivy.api("GET", "/me").json()["can_create_grains"] is True
    made = ivy.api("POST", "/grains", {"app_id": app_id, "title": "Ivy's"})
    assert made.status == 201, made.text
