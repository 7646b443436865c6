"""Sign-in journeys in a real Chromium: an email link (dev mode: the link is in auth's log) and
OpenID Connect against the real local provider (Authlib's server side, its own process), then
the title edit of a grain by its owner; and, because this platform has a single human admin,
the rule that the last enabled admin cannot be disabled.

This module starts its own platform: dev mode and an OpenID provider need settings the shared
frontend stack does not have, and the provider must know the callback URL before the platform
starts, so the platform gets a fixed free HTTP port instead of port 0.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, ensure_chromium
from tests.support.ports import free_block, free_port
from tests.support.stack import GRAINHOUSE, READY, Stack, make_data_root

from .harness import FRONTEND_ENV, Client, build_probe, install_package, make_token, setup_admin

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-signin")]
PASSWORD = "correct horse battery"
PROVIDER = Path(__file__).resolve().parents[1] / "auth" / "oidc_provider.py"
LAPTOP = {"width": 1280, "height": 800}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class FixedPortStack(Stack):
    """`grainhouse up` on a chosen HTTP port (the OpenID provider must know the callback)."""

    def __init__(self, root: Path, settings: dict[str, str], port: int) -> None:
        super().__init__(root, settings)
        self.port = port

    def start(self, timeout: float = 120) -> None:
        import os

        self._out = open(self.output, "ab")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
        env.update(self.settings)
        self.proc = subprocess.Popen(
            [GRAINHOUSE, "up", "--data-dir", str(self.data_dir), "--http-port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self._out, env=env, start_new_session=True,
        )  # fmt: skip
        self.starts += 1
        self.wait_for_line(READY, timeout)
        self.url = re.findall(re.escape(READY) + r" (\S+)", self.log())[-1].rstrip("/")

    def auth_log(self) -> str:
        path = self.data_dir / "logs" / "auth.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    root = make_data_root("gh-signin-")
    op_port = free_port()
    port = free_block(11, avoid=op_port)
    callback = f"http://localhost:{port}/login/oidc/corp/callback"
    issuer = f"http://127.0.0.1:{op_port}"
    client_secret = secrets.token_urlsafe(16)
    op_config = {
        "port": op_port, "issuer": issuer, "client_id": "grainhouse",
        "client_secret": client_secret, "redirect_uris": [callback],
        "user": {"sub": "nobody", "email": "nobody@corp.example", "email_verified": True},
    }  # fmt: skip
    op_log = open(root / "oidc.log", "wb")  # noqa: SIM115 - closed below
    op = subprocess.Popen(
        [sys.executable, str(PROVIDER), json.dumps(op_config)],
        stdout=op_log, stderr=op_log, start_new_session=True,
    )  # fmt: skip
    providers = {"corp": {"issuer": issuer, "client_id": "grainhouse",
                          "client_secret": client_secret, "redirect_uris": [callback]}}  # fmt: skip
    stack = FixedPortStack(
        root,
        {
            **FRONTEND_ENV,
            "GRAINHOUSE_DEV_MODE": "1",
            "GRAINHOUSE_AUTH_OIDC_PROVIDERS": json.dumps(providers),
            "GRAINHOUSE_FRONTEND_OIDC_PROVIDERS": "corp",
        },
        port,
    )
    try:
        deadline = time.monotonic() + 30
        while not http_ok(issuer + "/.well-known/openid-configuration"):
            assert time.monotonic() < deadline, (root / "oidc.log").read_text()
            time.sleep(0.1)
        stack.start()
        yield {"stack": stack, "issuer": issuer}
    finally:
        stack.stop()
        op.terminate()
        op.wait(10)
        op_log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope: Playwright's sync API keeps an event loop running in this thread while it
    # is open, which would break later asyncio tests on this worker (see tests/e2e/conftest.py).
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def admin(world: dict[str, Any]) -> Client:
    return setup_admin(world["stack"])


def invite(admin: Client, email: str) -> str:
    page = admin.form("/admin/invite", {"email": email}, csrf_from="/admin")
    found = re.search(r'id="invite-url">([^<]+)<', page.text)
    assert found, page.text[:500]
    return found.group(1).strip()


def as_user(issuer: str, user: dict[str, Any]) -> None:
    """Tell the provider who is "signed in" there (its authorization step approves at once)."""
    req = urllib.request.Request(
        issuer + "/test/user", data=json.dumps(user).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def test_email_link_sign_in(world: dict[str, Any], admin: Client, browser: Any) -> None:
    stack: FixedPortStack = world["stack"]
    # An account with a password, made through an invitation (the HTTP client is enough here).
    path = urllib.parse.urlsplit(invite(admin, "mia@example.org")).path
    made = Client(stack.url).form(
        path, {"display_name": "Mia Mail", "email": "mia@example.org", "password": PASSWORD}
    )
    assert made.status == 303

    ctx = browser.new_context(viewport=LAPTOP)
    page = ctx.new_page()
    page.goto(stack.url + "/login")
    page.fill("#link-email", "mia@example.org")
    page.click("text=Send link")
    page.wait_for_url(re.compile(r".*/login\?done=mail$"))
    assert "sign-in link is on its way" in page.locator("[role=status]").inner_text()

    # Dev mode: auth writes the link to its log instead of mailing it.
    link_re = re.compile(re.escape(stack.url) + r"/login/email\?code=([A-Za-z0-9_\-]+)")
    deadline = time.monotonic() + 10
    while not link_re.search(stack.auth_log()):
        assert time.monotonic() < deadline, stack.auth_log()[-2000:]
        time.sleep(0.1)
    link = link_re.findall(stack.auth_log())[-1]
    page.goto(f"{stack.url}/login/email?code={link}")
    # A button, not an automatic sign-in (mail scanners must not use the code up).
    assert page.locator("h1").inner_text() == "Sign in"
    page.click("button:has-text('Sign in')")
    page.wait_for_url(re.compile(r".*/$"))
    assert page.locator("h1").inner_text() == "Your grains"
    assert "Mia Mail" in page.locator(".who").inner_text()

    # The code is single use: a second try in a fresh browser fails.
    other = browser.new_context(viewport=LAPTOP).new_page()
    other.goto(f"{stack.url}/login/email?code={link}")
    other.click("button:has-text('Sign in')")
    assert "used or expired" in other.locator("main").inner_text()
    ctx.close()
    other.context.close()


def test_oidc_sign_up_by_invitation_then_sign_in(
    world: dict[str, Any], admin: Client, browser: Any
) -> None:
    stack: FixedPortStack = world["stack"]
    as_user(world["issuer"], {"sub": "corp-olga", "email": "olga@corp.example",
                              "email_verified": True, "name": "Olga Oidc"})  # fmt: skip
    # Not invited: the provider's answer alone makes no account.
    ctx = browser.new_context(viewport=LAPTOP)
    page = ctx.new_page()
    page.goto(stack.url + "/login")
    page.click("a:has-text('Corp')")
    page.wait_for_load_state()
    assert "ask for an invitation" in page.locator("main").inner_text()

    # Invited: the invitation page offers the provider; the account is created on return.
    page.goto(invite(admin, "olga@corp.example"))
    page.click("a:has-text('Corp')")
    page.wait_for_url(re.compile(r".*/$"))
    assert page.locator("h1").inner_text() == "Your grains"
    assert "Olga Oidc" in page.locator(".who").inner_text()
    page.click("button:has-text('Sign out')")
    page.wait_for_url(re.compile(r".*/login$"))

    # Later sign-ins need no invitation: the provider's subject is linked to the account.
    page.click("a:has-text('Corp')")
    page.wait_for_url(re.compile(r".*/$"))
    assert "Olga Oidc" in page.locator(".who").inner_text()
    ctx.close()


def test_owner_renames_a_grain_in_the_browser(
    world: dict[str, Any], admin: Client, browser: Any, tmp_path: Path
) -> None:
    stack: FixedPortStack = world["stack"]
    admin_api = Client(stack.url, token=make_token(admin))
    app = install_package(admin_api, build_probe(tmp_path))
    grain = admin_api.api("POST", "/grains", {"app_id": app["app_id"], "title": "Before"}).json()
    ctx = browser.new_context(viewport=LAPTOP)
    # The admin's session cookie, handed to the browser.
    ctx.add_cookies([{"name": k, "value": v, "url": stack.url}
                     for k, v in admin.cookies.get("localhost", {}).items()])  # fmt: skip
    page = ctx.new_page()
    page.goto(f"{stack.url}/grain/{grain['id']}")
    field = page.locator("#grain-title-input")
    assert field.input_value() == "Before"
    field.fill("After the rename")
    page.click("#rename-form button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("#grain-title-input").input_value() == "After the rename"
    assert admin_api.api("GET", f"/grains/{grain['id']}").json()["title"] == "After the rename"
    page.goto(stack.url + "/")
    assert "After the rename" in page.locator("table").inner_text()
    ctx.close()


def test_the_last_enabled_admin_cannot_be_disabled(world: dict[str, Any], admin: Client) -> None:
    # This platform has one human admin; the operator's token (`grainhouse admin api-token`)
    # is the only other admin power, and the operator account does not count as a person.
    stack: FixedPortStack = world["stack"]
    operator = Client(
        stack.url, token=json.loads(stack.cli("admin", "api-token", "--json"))["token"]
    )
    admin_id = Client(stack.url, token=make_token(admin)).api("GET", "/me").json()["account_id"]
    refused = operator.api("PATCH", f"/admin/users/{admin_id}", {"disabled": True})
    assert refused.status == 409 and "last enabled admin" in refused.text
    assert operator.api("GET", f"/admin/users/{admin_id}").json()["disabled"] is False
    assert admin.get("/admin").status == 200
    assert operator.api("PATCH", "/admin/users/operator", {"disabled": True}).status == 409


def test_admin_disables_and_enables_from_the_users_table(
    world: dict[str, Any], admin: Client, browser: Any
) -> None:
    stack: FixedPortStack = world["stack"]
    path = urllib.parse.urlsplit(invite(admin, "dan@example.org")).path
    dan = Client(stack.url)
    made = dan.form(path, {"display_name": "Dan Disable", "email": "dan@example.org",
                           "password": PASSWORD})  # fmt: skip
    assert made.status == 303 and dan.get("/").status == 200
    ctx = browser.new_context(viewport=LAPTOP)
    ctx.add_cookies([{"name": k, "value": v, "url": stack.url}
                     for k, v in admin.cookies.get("localhost", {}).items()])  # fmt: skip
    page = ctx.new_page()
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.goto(stack.url + "/admin")
    row = page.locator("#users tr", has_text="dan@example.org")
    row.locator("button:has-text('Disable')").click()
    page.wait_for_load_state()
    assert asked and "Dan Disable" in asked[0]  # the confirm names the person
    assert "disabled" in page.locator("[role=status]").inner_text()
    row = page.locator("#users tr", has_text="dan@example.org")
    assert "disabled" in row.inner_text()
    # Signed out at once: within a second of the answer (the revocation event reaches caches).
    deadline = time.monotonic() + 1.0
    while dan.get("/").status != 303:
        assert time.monotonic() < deadline, "the disabled account's session still works"
        time.sleep(0.05)
    row.locator("button:has-text('Enable')").click()
    page.wait_for_load_state()
    assert "enabled" in page.locator("[role=status]").inner_text()
    assert (
        page.locator("#users tr", has_text="dan@example.org")
        .locator("button:has-text('Disable')")
        .count()
        == 1
    )
    ctx.close()
