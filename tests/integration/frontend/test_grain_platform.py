"""Platform through the whole stack: the probe app, reached on its API host, calls Platform on
its bridge; the identity it gets back is the caller's, and its wake lock's reason shows in the
REST API, to the grain's owner only."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from grainhouse_cli import commands_common
from grainhouse_cli.commands_grains import grain_app

from .harness import Client, Stack, make_token, sign_up
from .test_grain_events import grain_with_token

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


def test_the_app_learns_who_called_and_its_wake_lock_shows_to_the_owner(
    stack: Stack,
    admin: Client,
    admin_api: Client,
    probe_app: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grain, grain_api = grain_with_token(admin_api, probe_app["app_id"], "Platform")
    headers = grain_api.get("/whoami").json()["headers"]
    who = grain_api.get(f"/platform/identity?session={headers['x-sandstorm-session-id']}")
    assert who.status == 200, who.text
    assert who.json()["identity"]["userId"] == headers["x-sandstorm-user-id"]
    assert ",".join(who.json()["permissions"]) == headers["x-sandstorm-permissions"]

    before = admin_api.api("GET", f"/grains/{grain}")
    assert before.json()["awake_reasons"] == []
    assert grain_api.get("/platform/awake?reason=nightly%20import").status == 200
    during = admin_api.api("GET", f"/grains/{grain}")
    assert during.json()["awake_reasons"] == ["nightly import"]
    assert during.headers["etag"] == before.headers["etag"]  # not an edit of the grain
    # The owner's grain list says so too, the app's words as text.
    assert grain_api.get("/platform/awake?reason=%3Cb%3Ebold%3C/b%3E").status == 200
    home = admin.get("/").text
    assert f'data-awake="{grain}">Kept awake: nightly import; &lt;b&gt;bold&lt;/b&gt;<' in home
    assert "The app asked to stay running: nightly import;" in admin.get(f"/grain/{grain}").text
    # The CLI's list says so in its state column (wide enough that no cell wraps).
    monkeypatch.setattr(commands_common.out_console, "width", 200)
    listed = CliRunner().invoke(
        grain_app,
        ["ls"],
        env={"GRAINHOUSE_URL": stack.url, "GRAINHOUSE_TOKEN": admin_api.token or ""},
    )
    assert listed.exit_code == 0, listed.stderr
    assert "running (kept awake)" in listed.stdout

    # Someone the grain is shared with sees the grain, not the app's words.
    link = admin_api.api("POST", f"/grains/{grain}/shares", {"role": "viewer"}).json()
    friend = sign_up(stack, admin, "Pia Platform", "pia@example.org")
    assert friend.get(link["url"]).status == 303
    seen = Client(stack.url, token=make_token(friend, "read")).api("GET", f"/grains/{grain}")
    assert seen.status == 200, seen.text
    assert "awake_reasons" not in seen.json()

    assert grain_api.get("/platform/release").status == 200
    assert admin_api.api("GET", f"/grains/{grain}").json()["awake_reasons"] == []
    assert f'data-awake="{grain}"' not in admin.get("/").text
