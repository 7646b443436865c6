"""Every grain endpoint × every kind of caller, with the outcome each must get.

Callers: anonymous, another user, a viewer, an editor, the owner, a revoked token, an expired
token. Outcomes are status classes: the point is that nobody gets more than their row says.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .harness import Client, Stack, make_token, sign_up

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]
CALLERS = ["anonymous", "other", "viewer", "editor", "owner", "revoked", "expired"]
OK, DENY, NOAUTH = "ok", "deny", "401"
# endpoint → expected outcome per caller (deny = 403 or 404: no existence leak required).
MATRIX: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/grains/{g}"): {"other": DENY, "viewer": OK, "editor": OK, "owner": OK},
    ("PATCH", "/grains/{g}"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("POST", "/grains/{g}/stop"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("GET", "/grains/{g}/logs"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("POST", "/grains/{g}/sessions"): {"other": DENY, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/grains/{g}/access"): {"other": DENY, "viewer": OK, "editor": OK, "owner": OK},
    ("POST", "/grains/{g}/shares"): {"other": DENY, "viewer": OK, "editor": OK, "owner": OK},
    ("POST", "/grains/{g}/trash"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("GET", "/grains"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/tokens"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/admin/status"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
}
BODIES = {"PATCH": {"title": "t"}, "POST": {"role": "viewer"}}


@pytest.fixture(scope="module")
def world(stack: Stack, admin: Client, probe_app: dict[str, Any]) -> dict[str, Any]:
    owner = sign_up(stack, admin, "Owen Owner", "owen@example.org")
    owner_api = Client(stack.url, token=make_token(owner, "write"))
    grain = owner_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "M"})
    gid = grain.json()["id"]
    tokens: dict[str, str | None] = {"anonymous": None, "owner": owner_api.token}
    for who, role in (("viewer", "viewer"), ("editor", "editor"), ("other", None)):
        user = sign_up(stack, admin, f"{who.title()} User", f"{who}@example.org")
        if role is not None:
            link = owner_api.api("POST", f"/grains/{gid}/shares", {"role": role}).json()["url"]
            redeemed = user.get(link)
            assert redeemed.status == 303, redeemed.text[:300]
        tokens[who] = make_token(user, "write")
    revoked = owner_api.api(
        "POST", "/tokens", {"name": "r", "scopes": ["write"], "ttl_seconds": 3600}
    )
    owner_api.api("DELETE", f"/tokens/{revoked.json()['id']}")
    tokens["revoked"] = revoked.json()["token"]
    expired = owner_api.api("POST", "/tokens", {"name": "e", "scopes": ["write"], "ttl_seconds": 1})
    assert expired.status == 201, expired.text
    tokens["expired"] = expired.json()["token"]
    time.sleep(2.5)
    return {"grain": gid, "tokens": tokens}


def outcome(status: int) -> str:
    if status == 401:
        return NOAUTH
    if status in (403, 404):
        return DENY
    assert status < 500, status
    return OK if status < 300 else f"other:{status}"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", list(MATRIX), ids=lambda e: f"{e[0]} {e[1]}")
def test_matrix(
    stack: Stack, world: dict[str, Any], endpoint: tuple[str, str], caller: str
) -> None:
    method, path = endpoint
    expected = MATRIX[endpoint].get(caller, NOAUTH)  # anonymous, revoked, expired → 401
    client = Client(stack.url, token=world["tokens"][caller])
    reply = client.api(method, path.format(g=world["grain"]), BODIES.get(method))
    assert outcome(reply.status) == expected, (reply.status, reply.text[:200])
    if reply.status >= 400:
        assert reply.headers["content-type"] == "application/problem+json"
