"""The web UI over plain HTTP: set-up link, sign-in (password, TOTP), cookies, CSRF, sign-out."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from .harness import Client, Stack, build_probe, install_package, make_token, sign_up

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]
PASSWORD = "correct horse battery"


def totp(secret: str, at: float | None = None) -> str:
    """RFC 6238 (SHA-1, 6 digits, 30 s), written out so the test needs no TOTP library."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    counter = int((at or time.time()) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def test_signed_in_admin_sees_the_shell(admin: Client) -> None:
    page = admin.get("/")
    assert page.status == 200
    assert "Your grains" in page.text and 'href="/admin"' in page.text
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp


def test_session_cookie_is_httponly_and_lax(stack: Stack, admin: Client) -> None:
    user = Client(stack.url)
    sign_up(stack, admin, "Cookie Carl", "carl@example.org")
    reply = user.form("/login", {"email": "carl@example.org", "password": PASSWORD})
    assert reply.status == 303
    raw = reply.headers["set-cookie"]
    assert raw.startswith("gh_session=") and "HttpOnly" in raw and "SameSite=lax" in raw


def test_wrong_password_is_refused(stack: Stack, admin: Client) -> None:
    reply = Client(stack.url).form("/login", {"email": "admin@example.org", "password": "nope" * 4})
    assert reply.status == 401 and "do not match" in reply.text


def test_forms_without_csrf_token_are_refused(stack: Stack, admin: Client) -> None:
    forged = admin.request(
        "POST", "/account/tokens", b"name=evil&scope=admin&days=1",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert forged.status == 403
    wrong = admin.form("/account/tokens", {"name": "x", "scope": "read", "csrf": "A" * 43})
    assert wrong.status == 403
    # Before sign-in: the double-submit cookie must match too.
    anon = Client(stack.url)
    reply = anon.request(
        "POST", "/login", b"email=a%40b.c&password=x&csrf=abc",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert reply.status == 403


def test_login_redirect_stays_on_the_platform(stack: Stack, admin: Client) -> None:
    c = Client(stack.url)
    csrf = c.csrf("/login")
    body = urllib.parse.urlencode({"email": "admin@example.org", "password": PASSWORD,
                                   "csrf": csrf, "next": "//evil.example/x"}).encode()  # fmt: skip
    reply = c.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 303 and reply.headers["location"] == "/"


def test_pages_need_sign_in(stack: Stack) -> None:
    for path in ("/", "/apps", "/account", "/admin", "/grain/abc"):
        reply = Client(stack.url).get(path)
        assert reply.status == 303 and reply.headers["location"].startswith("/login?next="), path


def test_totp_enrolment_and_two_step_login(stack: Stack, admin: Client) -> None:
    user = sign_up(stack, admin, "Tina Totp", "tina@example.org")
    page = user.form("/account/totp/enroll", {}, csrf_from="/account")
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
    assert secret, page.text[:800]
    done = user.form("/account/totp/confirm", {"code": totp(secret.group(1))}, csrf_from="/account")
    assert done.status == 200 and "Recovery codes" in done.text
    assert user.form("/logout", {}, csrf_from="/account").status == 303
    assert user.get("/").status == 303  # signed out
    step1 = user.form("/login", {"email": "tina@example.org", "password": PASSWORD})
    assert step1.status == 200 and "Two-factor code" in step1.text
    challenge = re.search(r'name="challenge" value="([^"]+)"', step1.text)
    assert challenge
    bad = user.form("/login/totp", {"challenge": challenge.group(1), "code": "000000"},
                    csrf_from="/login")  # fmt: skip
    assert bad.status == 401
    # Codes are single-use per window: use the next window's code (accepted with clock drift).
    good = user.form(
        "/login/totp",
        {"challenge": challenge.group(1), "code": totp(secret.group(1), time.time() + 30)},
        csrf_from="/login",
    )  # fmt: skip
    assert good.status == 303, good.text[:300]
    assert user.get("/").status == 200


def test_setup_link_works_once(stack: Stack, admin: Client) -> None:
    link = stack.cli("admin", "setup-link").strip().splitlines()[-1]
    path = urllib.parse.urlsplit(link).path
    first = Client(stack.url).form(
        path, {"display_name": "Second Admin", "email": "admin2@example.org", "password": PASSWORD}
    )
    assert first.status == 303
    again = Client(stack.url).form(
        path, {"display_name": "Third", "email": "admin3@example.org", "password": PASSWORD}
    )
    assert again.status == 400 and "used or expired" in again.text


def test_change_password_signs_out_other_sessions(stack: Stack, admin: Client) -> None:
    user = sign_up(stack, admin, "Pat Pass", "pat@example.org")
    other = Client(stack.url)
    assert other.form("/login", {"email": "pat@example.org", "password": PASSWORD}).status == 303
    reply = user.form(
        "/account/password",
        {"old_password": PASSWORD, "new_password": "another long passphrase"},
        csrf_from="/account",
    )
    assert reply.status == 303
    assert user.get("/account").status == 200
    assert other.get("/account").status == 303


def test_grain_list_searches_sorts_trashes_and_restores(
    stack: Stack, admin: Client, notes_app: dict[str, Any]
) -> None:
    user = sign_up(stack, admin, "Sorting Sam", "sorting-sam@example.org")
    api = Client(stack.url, token=make_token(user, "write"))
    ids = {}
    for title in ("Zebra plans", "alpha list", "Middle notes"):
        made = api.api("POST", "/grains", {"app_id": notes_app["app_id"], "title": title})
        assert made.status == 201, made.text
        ids[title] = made.json()["id"]

    def titles(page: str) -> list[str]:
        found = [(page.find(t), t) for t in ids if t in page]
        return [t for _, t in sorted(found)]

    # Search: by title, case-insensitive; by app title (all three are notes).
    assert titles(user.get("/?q=ZEB").text) == ["Zebra plans"]
    assert len(titles(user.get("/?q=" + urllib.parse.quote(notes_app["title"])).text)) == 3
    # Sort by title (case-insensitive), and by creation (newest first).
    assert titles(user.get("/?sort=title").text) == ["alpha list", "Middle notes", "Zebra plans"]
    assert titles(user.get("/?sort=created").text) == ["Middle notes", "alpha list", "Zebra plans"]

    # Trash moves a grain out of the list into the trash view; restore brings it back.
    gone = user.form(f"/grain/{ids['alpha list']}/trash", {}, csrf_from="/")
    assert gone.status == 303, gone.text[:300]
    assert set(titles(user.get("/").text)) == {"Middle notes", "Zebra plans"}
    assert titles(user.get("/?view=trash").text) == ["alpha list"]
    back = user.form(f"/grain/{ids['alpha list']}/restore", {}, csrf_from="/?view=trash")
    assert back.status == 303, back.text[:300]
    assert set(titles(user.get("/").text)) == set(ids)
    assert titles(user.get("/?view=trash").text) == []


def test_grain_bar_restart_and_log_and_admin_uninstall(
    stack: Stack, admin: Client, admin_api: Client, tmp_path: Path
) -> None:
    app = install_package(admin_api, build_probe(tmp_path))
    grain = admin_api.api("POST", "/grains", {"app_id": app["app_id"], "title": "Bar"}).json()["id"]
    assert admin_api.api("POST", f"/grains/{grain}/sessions", {}).status in (200, 201)

    # Restart from the grain bar: back on the grain's page, the grain running again.
    done = admin.form(f"/grain/{grain}/restart", {}, csrf_from=f"/grain/{grain}")
    assert done.status == 303 and done.headers["location"].endswith(f"/grain/{grain}")
    deadline = time.monotonic() + 60
    while admin_api.api("GET", f"/grains/{grain}").json()["state"] != "running":
        assert time.monotonic() < deadline, "the grain did not come back after restart"
        time.sleep(0.2)
    # The log page shows the grain's own log: the bridge's lines of both starts.
    log = admin.get(f"/grain/{grain}/log")
    assert log.status == 200 and "Bar" in log.text
    assert log.text.count("[bridge]") >= 2, log.text[-2000:]

    # Uninstall from the apps page: refused for a non-admin, done for the admin once unused.
    other = sign_up(stack, admin, "Una Uninstaller", "uninstall-una@example.org")
    refused = other.form(f"/apps/{app['package_id']}/uninstall", {}, csrf_from="/apps")
    assert refused.status == 403
    assert admin_api.api("DELETE", f"/grains/{grain}?force=true").status == 204
    gone = admin.form(f"/apps/{app['package_id']}/uninstall", {}, csrf_from="/apps")
    assert gone.status == 303, gone.text[:300]
    assert app["package_id"] not in admin.get("/apps").text
