"""The last UI gaps in a real Chromium: the Backups link and backup schedules (create, delete),
the admin page's Promote / Make visitor buttons, and its storage tables (per user, per grain)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from grainhouse_frontend.page_base import human_size
from tests.integration.frontend.harness import (
    Client,
    Stack,
    build_probe,
    install_package,
    make_token,
    setup_admin,
    sign_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("frontend-e2e")]
PASSWORD = "correct horse battery"
EMAIL = "schedules-admin@example.org"


@pytest.fixture(scope="module")
def world(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    admin = setup_admin(stack, EMAIL)
    api = Client(stack.url, token=make_token(admin))
    probe = install_package(api, build_probe(tmp_path_factory.mktemp("probe")))
    made = api.api("POST", "/grains", {"app_id": probe["app_id"], "title": "Scheduled"})
    assert made.status == 201, made.text
    return {"admin": admin, "api": api, "grain": made.json()["id"]}


def signed_in(browser: Any, stack: Stack, email: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(stack.url + "/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit] >> text=Sign in")
    page.wait_for_url(re.compile(r".*/$"))
    page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm questions
    return page


def test_schedules_are_made_and_deleted_from_the_backups_page(
    stack: Stack, browser: Any, world: dict[str, Any]
) -> None:
    api, gid = world["api"], world["grain"]
    page = signed_in(browser, stack, EMAIL)
    page.click(".topnav nav >> text=Backups")
    page.wait_for_url(re.compile(r".*/backups$"))
    assert page.locator("#no-schedules").is_visible()

    # One grain, weekly, keep 3.
    page.select_option("#schedule-form select[name=what]", gid)
    page.select_option("#schedule-form select[name=frequency]", "weekly")
    page.fill("#schedule-form input[name=keep]", "3")
    page.click("#schedule-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/backups\?done=schedule-made$"))
    rows = page.locator("#schedules tbody tr")
    assert rows.count() == 1
    assert "Scheduled" in rows.first.inner_text() and "weekly" in rows.first.inner_text()
    one = api.api("GET", "/backup-schedules").json()["items"]
    assert len(one) == 1
    assert one[0]["grain_id"] == gid and one[0]["frequency"] == "weekly"
    assert one[0]["retention"]["keep_last"] == 3
    assert rows.first.get_attribute("data-schedule-id") == one[0]["id"]

    # All grains, hourly, keep 2.
    page.select_option("#schedule-form select[name=what]", "all")
    page.select_option("#schedule-form select[name=frequency]", "hourly")
    page.fill("#schedule-form input[name=keep]", "2")
    page.click("#schedule-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/backups\?done=schedule-made$"))
    assert rows.count() == 2
    both = api.api("GET", "/backup-schedules").json()["items"]
    everything = [s for s in both if s["all_grains"]]
    assert len(everything) == 1 and everything[0]["frequency"] == "hourly"

    # Delete the grain's schedule: only the other one stays, here and in the API.
    page.locator(f"#schedules tr[data-schedule-id='{one[0]['id']}'] button.danger").click()
    page.wait_for_url(re.compile(r".*/backups\?done=schedule-deleted$"))
    assert rows.count() == 1
    left = api.api("GET", "/backup-schedules").json()["items"]
    assert [s["id"] for s in left] == [everything[0]["id"]]
    page.locator("#schedules button.danger").click()
    page.wait_for_url(re.compile(r".*/backups\?done=schedule-deleted$"))
    assert page.locator("#no-schedules").is_visible()
    assert api.api("GET", "/backup-schedules").json()["items"] == []

    # A bad "keep" is refused by the server too (the browser's min/max is no guard).
    reply = world["admin"].form(
        "/backups/schedules", {"what": "all", "frequency": "daily", "keep": "0"}, "/backups"
    )
    assert reply.status == 400
    assert api.api("GET", "/backup-schedules").json()["items"] == []
    page.context.close()


def test_admin_makes_a_visitor_and_promotes_them(
    stack: Stack, browser: Any, world: dict[str, Any]
) -> None:
    sign_up(stack, world["admin"], "Vic Visitor", "vic@example.org")
    vic = signed_in(browser, stack, "vic@example.org")
    new_grain = vic.locator("a.button >> text=New grain")
    assert new_grain.count() == 1  # invited: a full user

    admin = signed_in(browser, stack, EMAIL)
    admin.goto(stack.url + "/admin")
    row = admin.locator("#users tr", has_text="vic@example.org")
    row.locator("button.make-visitor").click()
    admin.wait_for_selector("text=Vic Visitor is a visitor now")
    assert row.locator(".badge.visitor").count() == 1
    vic.reload()
    assert new_grain.count() == 0

    row.locator("button.promote").click()
    admin.wait_for_selector("text=Vic Visitor is a full user now")
    assert row.locator(".badge.visitor").count() == 0
    assert row.locator("button.make-visitor").count() == 1
    vic.reload()
    assert new_grain.count() == 1
    # Admins have no such buttons (an admin cannot be a visitor), nor has your own row.
    me = admin.locator("#users tr", has_text=EMAIL)
    assert me.locator("button.make-visitor, button.promote").count() == 0
    vic.context.close()
    admin.context.close()


def test_storage_tables_show_a_grains_size(
    stack: Stack, browser: Any, world: dict[str, Any]
) -> None:
    api, gid = world["api"], world["grain"]
    # Write into the grain through its origin, then stop it: grainmgr measures at stop.
    page = world["admin"].get(f"/grain/{gid}").text
    found = re.search(r'src="(http://ui-[0-9a-f]{32}\.localhost:\d+/)"', page)
    assert found, page[:500]
    wrote = world["admin"].get(found.group(1) + "write?name=blob&data=" + "x" * 4000)
    assert wrote.status == 200, wrote.text
    stopped = api.api("POST", f"/grains/{gid}/stop")
    assert stopped.status < 300, stopped.text
    deadline = time.monotonic() + 60
    info = api.api("GET", f"/grains/{gid}").json()
    while info["state"] != "stopped" or not info["size_bytes"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.3)
        info = api.api("GET", f"/grains/{gid}").json()
    size = int(info["size_bytes"])
    assert size >= 4000
    owner = api.api("GET", "/me").json()["account_id"]

    admin = signed_in(browser, stack, EMAIL)
    admin.goto(stack.url + "/admin")
    grain_row = admin.locator(f"#storage-per-grain tr[data-grain-id='{gid}']")
    assert grain_row.get_attribute("data-bytes") == str(size)
    assert human_size(size) in grain_row.inner_text()
    user_row = admin.locator(f"#storage-per-user tr[data-account='{owner}']")
    assert int(user_row.get_attribute("data-bytes") or "0") >= size
    assert "Ada Admin" in user_row.inner_text()  # the owner's name, not an id
    admin.context.close()


def test_backups_link_is_in_the_nav_everywhere(stack: Stack, browser: Any) -> None:
    page = signed_in(browser, stack, EMAIL)
    for path in ("/", "/apps", "/account"):
        page.goto(stack.url + path)
        assert page.locator(".topnav nav a[href='/backups']").count() == 1
    page.goto(stack.url + "/backups")
    assert "active" in (page.locator(".topnav nav a[href='/backups']").get_attribute("class") or "")
    page.context.close()
