"""Grain traffic: per-session origins, what crosses into a grain, and the API host."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from .harness import Client, Stack, guest_by_share_link

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


@pytest.fixture(scope="module")
def grain(probe_app: dict[str, Any], admin_api: Client) -> str:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Probe"})
    return str(made.json()["id"])


def origin_of(admin: Client, grain_id: str) -> str:
    page = admin.get(f"/grain/{grain_id}")
    assert page.status == 200, page.text[:300]
    found = re.search(r'src="(http://ui-[0-9a-f]{32}\.localhost:\d+/)"', page.text)
    assert found, page.text
    return found.group(1)


def test_grain_page_frames_a_fresh_origin_each_time(admin: Client, grain: str) -> None:
    assert origin_of(admin, grain) != origin_of(admin, grain)


def test_what_crosses_into_the_grain(admin: Client, grain: str, stack: Stack) -> None:
    url = origin_of(admin, grain)
    host = url.split("/")[2]
    admin.cookies.setdefault("ui-" + host.split("ui-")[1].split(":")[0], {})
    reply = admin.get(
        url + "whoami",
        headers={
            "Cookie": "gh_session=stolen; gh_csrf=x; app_pref=dark",
            "Authorization": "Bearer ghp_platform-token",
            "X-Sandstorm-Permissions": "admin,everything",
            "X-Sandstorm-User-Id": "forged",
        },
    )
    assert reply.status == 200, reply.text
    seen = reply.json()["headers"]
    assert "authorization" not in seen
    assert seen.get("cookie") == "app_pref=dark"  # the grain's own cookies pass, ours never
    assert seen["x-sandstorm-permissions"] == "view,edit" or set(
        seen["x-sandstorm-permissions"].split(",")
    ) == {"view", "edit"}
    assert seen["x-sandstorm-user-id"] != "forged"
    assert seen["x-sandstorm-username"] == "Ada%20Admin"
    assert seen["x-sandstorm-session-type"] == "normal"
    assert seen["x-sandstorm-base-path"] == url.rstrip("/")
    csp = reply.headers["content-security-policy"]
    assert f"frame-ancestors {stack.url}" in csp
    assert reply.headers["referrer-policy"] == "no-referrer"


def test_foreign_origin_writes_are_refused(admin: Client, grain: str) -> None:
    url = origin_of(admin, grain)
    host = url.split("/")[2]
    evil = admin.request("POST", url + "upload", b"x", {"Origin": "http://evil.example"})
    assert evil.status == 403
    same = admin.request("POST", url + "upload", b"x", {"Origin": f"http://{host}"})
    assert same.status != 403
    plain_get = admin.request("GET", url + "whoami", headers={"Origin": "http://evil.example"})
    assert plain_get.status == 200


def test_unknown_origin_and_platform_routes_on_grain_hosts(stack: Stack) -> None:
    port = stack.url.rsplit(":", 1)[1]
    c = Client(stack.url)
    assert c.get(f"http://ui-{'0' * 32}.localhost:{port}/").status == 404
    # The platform's API and pages are not reachable under a grain host.
    assert c.get(f"http://ui-{'0' * 32}.localhost:{port}/api/v1/openapi.json").status == 404


def test_api_host_takes_grain_tokens_by_bearer_and_basic(
    admin_api: Client, grain: str, stack: Stack
) -> None:
    made = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "viewer", "label": "dav"})
    assert made.status == 201
    token, api_url = made.json()["token"], made.json()["api_url"]
    assert api_url.startswith("http://api.localhost:")
    c = Client(stack.url)
    bearer = c.get(api_url + "/whoami", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status == 200
    seen = bearer.json()["headers"]
    assert seen["x-sandstorm-permissions"] == "view" and "authorization" not in seen
    assert seen["x-sandstorm-session-type"] == "api"
    basic = base64.b64encode(f"anyone:{token}".encode()).decode()
    assert c.get(api_url + "/whoami", headers={"Authorization": f"Basic {basic}"}).status == 200
    none = c.get(api_url + "/whoami")
    assert none.status == 401 and none.headers["www-authenticate"].startswith("Basic")
    # A personal API token is not a grain token.
    refused = c.get(api_url + "/whoami", headers={"Authorization": f"Bearer {admin_api.token}"})
    assert refused.status == 403
    # Revoking the token's grant ends it.
    assert admin_api.api("DELETE", f"/grants/{made.json()['grant']['id']}").status == 200
    after = c.get(api_url + "/whoami", headers={"Authorization": f"Bearer {token}"})
    assert after.status in (401, 403)


def test_anonymous_share_link_opens_the_grain_as_a_guest(
    stack: Stack, admin_api: Client, grain: str
) -> None:
    link, guest, page, url = guest_by_share_link(stack, admin_api, grain)
    assert "Share</a>" not in page.text  # guests get no platform buttons
    seen = guest.get(url + "whoami").json()["headers"]
    assert seen["x-sandstorm-permissions"] == "view"
    assert "x-sandstorm-user-id" not in seen
    assert admin_api.api("DELETE", f"/grants/{link['grant']['id']}").status == 200
    assert guest.get(url + "whoami").status in (401, 403, 404)
    assert guest.get(link["url"]).status == 404
