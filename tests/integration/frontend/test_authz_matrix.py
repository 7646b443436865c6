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
    # Before the trash row: a trashed grain cannot be backed up (409).
    ("POST", "/grains/{g}/backups"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("POST", "/grains/{g}/trash"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("GET", "/grains"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/tokens"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/admin/status"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
    ("GET", "/grains?scope=shared"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/admin/users/{a}"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
    ("PATCH", "/admin/users/{a}"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
    ("GET", "/admin/invitations"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
    ("DELETE", "/admin/invitations/{i}"): {
        "other": DENY, "viewer": DENY, "editor": DENY, "owner": DENY},
    # Backups (world's backup {b}, its task {t} and schedule {s} belong to the grain's owner).
    ("GET", "/backups"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/backups/{b}"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("GET", "/backups/{b}/download"): {"other": DENY, "viewer": DENY, "editor": DENY,
                                       "owner": OK},
    ("GET", "/tasks/{t}"): {"other": DENY, "viewer": DENY, "editor": DENY, "owner": OK},
    ("POST", "/restores"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("GET", "/backup-schedules"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("POST", "/backup-schedules"): {"other": OK, "viewer": OK, "editor": OK, "owner": OK},
    ("DELETE", "/backup-schedules/{s}"): {"other": DENY, "viewer": DENY, "editor": DENY,
                                          "owner": OK},
}  # fmt: skip
BODIES = {"PATCH": {"title": "t", "disabled": True}, "POST": {"role": "viewer"}}
ENDPOINT_BODIES = {("POST", "/backup-schedules"): {"all_grains": True, "frequency": "weekly"}}


@pytest.fixture(scope="module")
def world(
    stack: Stack, admin: Client, admin_api: Client, probe_app: dict[str, Any]
) -> dict[str, Any]:
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
    task = owner_api.api("POST", f"/grains/{gid}/backups", {}).json()
    for _ in range(600):
        if task["state"] != "running":
            break
        time.sleep(0.2)
        task = owner_api.api("GET", f"/tasks/{task['id']}").json()
    assert task["state"] == "succeeded", task
    schedule = owner_api.api("POST", "/backup-schedules", {"grain_id": gid, "frequency": "daily"})
    assert schedule.status == 201, schedule.text
    backups = {"b": task["result"]["backup_id"], "t": task["id"], "s": schedule.json()["id"]}
    # Admin targets that exist, so a wrong "deny" cannot hide behind a 404.
    invitation = admin_api.api("POST", "/admin/invitations", {}).json()["id"]
    return {"grain": gid, "tokens": tokens, "account": owner_api.api("GET", "/me").json()[
        "account_id"], "invitation": invitation, "backups": backups}  # fmt: skip


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
    target = path.format(g=world["grain"], a=world["account"], i=world["invitation"],
                         **world["backups"])  # fmt: skip
    reply = client.api(method, target, ENDPOINT_BODIES.get(endpoint, BODIES.get(method)))
    assert outcome(reply.status) == expected, (reply.status, reply.text[:200])
    if reply.status >= 400:
        assert reply.headers["content-type"] == "application/problem+json"
