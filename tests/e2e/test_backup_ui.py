"""Backups in a real Chromium: the grain view's Backup button, the backup listed, downloaded
(the file is the archive the API describes), and restored by upload into a new grain."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.frontend.harness import (
    Client,
    Stack,
    build_probe,
    install_package,
    make_token,
    setup_admin,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("frontend-e2e")]
PASSWORD = "correct horse battery"
EMAIL = "backup-admin@example.org"


def test_backup_button_lists_and_downloads(stack: Stack, browser: Any, tmp_path: Path) -> None:
    api = Client(stack.url, token=make_token(setup_admin(stack, EMAIL)))
    probe = install_package(api, build_probe(tmp_path))
    gid = api.api("POST", "/grains", {"app_id": probe["app_id"], "title": "Kept"}).json()["id"]

    ctx = browser.new_context(accept_downloads=True)
    page = ctx.new_page()
    page.goto(stack.url + "/login")
    page.fill("#email", EMAIL)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit] >> text=Sign in")
    page.wait_for_url(re.compile(r".*/$"))

    # The grain view's Backup button leads to the grain's backups; "Back up now" makes one.
    page.goto(f"{stack.url}/grain/{gid}")
    page.click(".grainbar >> text=Backup")
    page.wait_for_url(re.compile(rf".*/grain/{gid}/backup$"))
    assert page.locator("#no-backups").is_visible()
    page.click("#backup-form button[type=submit]")
    # The page refreshes itself while the task runs, until the backup is listed.
    page.wait_for_selector("#task-status[data-state=succeeded]", timeout=120_000)
    rows = page.locator("#backups tbody tr")
    assert rows.count() == 1
    backup_id = rows.first.get_attribute("data-backup-id") or ""
    info = api.api("GET", f"/backups/{backup_id}").json()
    assert info["grain_id"] == gid

    with page.expect_download() as waiting:
        rows.first.locator("a.download").click()
    download = waiting.value
    saved = tmp_path / "download.zip"
    download.save_as(saved)
    assert download.suggested_filename.startswith("Kept-") and saved.suffix == ".zip"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == info["sha256"]
    assert zipfile.is_zipfile(saved)

    # Restore by upload from the backups page: a new grain, opened from the notice.
    page.goto(stack.url + "/backups")
    assert backup_id in page.locator("#backups").inner_html()
    page.set_input_files("#restore-form input[type=file]", str(saved))
    page.fill("#restore-form input[name=title]", "Kept again")
    page.click("#restore-form button[type=submit]")
    page.wait_for_selector("#task-status[data-state=succeeded]", timeout=120_000)
    page.click("#restored-grain")
    page.wait_for_url(re.compile(r".*/grain/[a-z0-9]+$"))
    restored = page.url.rsplit("/", 1)[1]
    assert restored != gid and api.api("GET", f"/grains/{restored}").json()["title"] == "Kept again"
    ctx.close()
