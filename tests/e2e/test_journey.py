"""The journey in a real Chromium: set up, token, install notes, write, share, revoke."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.frontend.harness import Stack, build_notes

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("frontend-e2e")]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct horse battery"


def sign_up(page: Any, url: str, name: str, email: str) -> None:
    page.goto(url)
    page.fill("#display_name", name)
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def note_post(frame: Any, title: str) -> int:
    return int(
        frame.evaluate(
            """async (title) => (await fetch('/api/notes', {method: 'POST',
                 headers: {'Content-Type': 'application/json'},
                 body: JSON.stringify({title: title, body: 'from the browser'})})).status""",
            title,
        )
    )


def test_notes_journey(stack: Stack, browser: Any, tmp_path: Path) -> None:
    # Screenshots for a human eye: kept where GRAINHOUSE_E2E_SCREENSHOTS points, else discarded.
    shots = Path(os.environ.get("GRAINHOUSE_E2E_SCREENSHOTS", "") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    owner_ctx = browser.new_context(viewport=LAPTOP)
    page = owner_ctx.new_page()

    # 1. First-run set-up through the one-time link, which signs the admin in.
    link = stack.cli("admin", "setup-link").strip().splitlines()[-1]
    sign_up(page, link, "Ada Admin", "ada@example.org")
    assert page.locator("h1").inner_text() == "Your grains"

    # 2. Account page: make an API token; it is shown once.
    page.click("text=Account")
    page.fill("#token-name", "laptop cli")
    page.click("text=Create token")
    token = page.locator("#new-token").inner_text().strip()
    assert token.startswith("ghp_")
    assert "laptop cli" in page.locator("table").inner_text()
    page.screenshot(path=str(shots / "account-laptop.png"), full_page=True)

    # 3. Install the notes app by upload from the Apps page.
    pkg = build_notes(tmp_path)
    page.click("nav >> text=Apps")
    page.set_input_files("input[type=file]", str(pkg))
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/apps\?done=installed"), timeout=120_000)
    assert "Notes" in page.locator(".grid").inner_text()

    # 4. A new notebook from the app's action; the grain opens in its own origin.
    page.fill("input[name=title]", "Team notes")
    page.click("text=New notebook")
    page.wait_for_url(re.compile(r".*/grain/[a-z0-9]+$"))
    src = page.locator("#grain-frame").get_attribute("src") or ""
    assert re.match(r"http://ui-[0-9a-f]{32}\.localhost:\d+/$", src), src
    frame = page.frame_locator("#grain-frame")
    assert "(editor)" in frame.locator("body").inner_text(timeout=90_000)
    grain_frame = next(f for f in page.frames if f.url.startswith("http://ui-"))

    # 5. Edit: write a note from inside the grain (same-origin fetch through the proxy).
    assert note_post(grain_frame, "Plan") == 201
    grain_frame.goto(src)
    assert "Plan" in grain_frame.inner_text("body")

    # 6. The grain cannot read the platform's cookies nor call the platform API.
    assert "gh_session" not in str(grain_frame.evaluate("document.cookie"))
    api = stack.url + "/api/v1/me"
    outcome = grain_frame.evaluate(
        """async (u) => { try { const r = await fetch(u, {credentials: 'include'});
             return 'read:' + r.status; } catch (e) { return 'blocked'; } }""",
        api,
    )
    assert outcome == "blocked"
    page.screenshot(path=str(shots / "grain-laptop.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(shots / "grain-phone.png"))
    page.set_viewport_size(LAPTOP)

    # 7. Share a viewer link.
    page.click("text=Share")
    page.select_option("#role", "viewer")
    page.fill("#label", "for Bob")
    page.click("text=Create link")
    share_url = page.locator("#share-url").inner_text().strip()
    assert "/shared/ghl_" in share_url
    assert "for Bob" in page.locator("table").inner_text()

    # 8. Bob (another account, in another browser context) opens it and reads, read-only.
    page.goto(stack.url + "/admin")
    page.click("form[action='/admin/invite'] button")
    invite = page.locator("#invite-url").inner_text().strip()
    bob_ctx = browser.new_context(viewport=PHONE)
    bob = bob_ctx.new_page()
    sign_up(bob, invite, "Bob Viewer", "bob@example.org")
    bob.goto(share_url)
    bob.wait_for_url(re.compile(r".*/grain/[a-z0-9]+$"))
    bob_text = bob.frame_locator("#grain-frame").locator("body").inner_text(timeout=90_000)
    assert "Plan" in bob_text and "(viewer)" in bob_text
    bob_frame = next(f for f in bob.frames if f.url.startswith("http://ui-"))
    bob_origin = bob_frame.url
    assert note_post(bob_frame, "Bob was here") == 403
    bob.screenshot(path=str(shots / "shared-phone.png"))

    # 9. Revoke the link: Bob's access (granted through it) ends at once.
    grain_path = "/grain/" + bob.url.rsplit("/grain/", 1)[1]
    page.goto(stack.url + grain_path + "/share")
    page.locator("tr", has_text="for Bob").locator("text=Revoke").click()
    page.wait_for_url(re.compile(r".*done=revoked"))
    bob.goto(stack.url + grain_path)
    assert "No access" in bob.locator("h1").inner_text()
    # The grain origin Bob still knows stops answering for him too.
    gone = bob.goto(bob_origin + "api/notes")
    assert gone is not None and gone.status in (403, 404)
    page.set_viewport_size(PHONE)
    page.goto(stack.url + "/")
    page.screenshot(path=str(shots / "grains-phone.png"), full_page=True)
    owner_ctx.close()
    bob_ctx.close()
