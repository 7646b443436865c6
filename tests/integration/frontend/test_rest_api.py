"""The REST API: tokens, apps (202 + task), grains (cursor, ETag/If-Match, Idempotency-Key)."""

from __future__ import annotations

from typing import Any

import pytest

from .harness import Client, Stack, make_token

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


def test_token_lifecycle_and_revocation_is_immediate(stack: Stack, admin_api: Client) -> None:
    made = admin_api.api(
        "POST", "/tokens", {"name": "short", "scopes": ["admin"], "ttl_seconds": 3600}
    )
    assert made.status == 201 and made.json()["token"].startswith("ghp_")
    tok = Client(stack.url, token=made.json()["token"])
    assert tok.api("GET", "/me").json()["scope"] == "admin"
    listed = admin_api.api("GET", "/tokens?limit=200").json()["items"]
    assert made.json()["id"] in {t["id"] for t in listed}
    assert all("token" not in t for t in listed)
    assert admin_api.api("DELETE", f"/tokens/{made.json()['id']}").status == 204
    gone = tok.api("GET", "/me")
    assert gone.status == 401 and gone.headers["content-type"] == "application/problem+json"


def test_a_read_token_may_not_write(stack: Stack) -> None:
    reader = Client(stack.url, token=make_token(_browser(stack), "read"))
    assert reader.api("GET", "/grains").status == 200
    refused = reader.api("POST", "/grains", {"app_id": "x"})
    assert refused.status == 403 and "write scope" in refused.json()["detail"]


def _browser(stack: Stack) -> Client:
    c = Client(stack.url)
    reply = c.form("/login", {"email": "admin@example.org", "password": "correct horse battery"})
    assert reply.status == 303
    return c


def test_install_answers_202_with_a_task(probe_app: dict[str, Any], admin_api: Client) -> None:
    assert probe_app["title"] == "Probe"
    apps = admin_api.api("GET", "/apps").json()["items"]
    assert probe_app["package_id"] in {a["package_id"] for a in apps}


def test_install_of_garbage_fails_as_a_task(admin_api: Client) -> None:
    reply = admin_api.request(
        "POST", "/api/v1/apps", b"not a package" * 100, {"Content-Type": "application/octet-stream"}
    )
    assert reply.status in (202, 400), reply.text
    if reply.status == 202:
        task = reply.json()
        for _ in range(100):
            if task["state"] != "running":
                break
            task = admin_api.api("GET", f"/tasks/{task['id']}").json()
        assert task["state"] == "failed" and task["error"]["status"] == 400


def test_grain_crud_with_etag_and_if_match(probe_app: dict[str, Any], admin_api: Client) -> None:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Etag"})
    assert made.status == 201 and made.headers["location"].endswith(made.json()["id"])
    gid = made.json()["id"]
    got = admin_api.api("GET", f"/grains/{gid}")
    etag = got.headers["etag"]
    stale = admin_api.api("PATCH", f"/grains/{gid}", {"title": "B"}, **{"If-Match": '"nope"'})
    assert stale.status == 412
    ok = admin_api.api("PATCH", f"/grains/{gid}", {"title": "Renamed"}, **{"If-Match": etag})
    assert ok.status == 200 and ok.json()["title"] == "Renamed" and ok.headers["etag"] != etag
    again = admin_api.api("PATCH", f"/grains/{gid}", {"title": "C"}, **{"If-Match": etag})
    assert again.status == 412
    assert admin_api.api("POST", f"/grains/{gid}/trash").json()["state"] == "trashed"
    trash = admin_api.api("GET", "/grains?trashed=only").json()["items"]
    assert gid in {g["id"] for g in trash}
    assert admin_api.api("POST", f"/grains/{gid}/restore").json()["state"] != "trashed"
    assert admin_api.api("DELETE", f"/grains/{gid}?force=true").status == 204
    assert admin_api.api("GET", f"/grains/{gid}").status == 404


def test_cursor_pagination_walks_every_grain(
    probe_app: dict[str, Any], stack: Stack, admin: Client
) -> None:
    from .harness import sign_up

    user = sign_up(stack, admin, "Paula Pages", "paula@example.org")
    api = Client(stack.url, token=make_token(user, "write"))
    made = {
        api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": f"g{i}"}).json()["id"]
        for i in range(5)
    }
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        page = api.api("GET", "/grains?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["items"]) <= 2
        seen += [g["id"] for g in page["items"]]
        cursor = page["next_cursor"] or ""
        if not cursor:
            break
    assert sorted(seen) == sorted(made)
    assert api.api("GET", "/grains?limit=0").status == 400


def test_idempotency_key_replays_the_first_answer(
    probe_app: dict[str, Any], admin_api: Client
) -> None:
    doc = {"app_id": probe_app["app_id"], "title": "Once"}
    first = admin_api.api("POST", "/grains", doc, **{"Idempotency-Key": "k-123"})
    second = admin_api.api("POST", "/grains", doc, **{"Idempotency-Key": "k-123"})
    assert first.status == second.status == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    other = admin_api.api(
        "POST", "/grains", {**doc, "title": "Twice"}, **{"Idempotency-Key": "k-123"}
    )
    assert other.status == 422
    fresh = admin_api.api("POST", "/grains", doc, **{"Idempotency-Key": "k-456"})
    assert fresh.json()["id"] != first.json()["id"]


def test_openapi_declares_parameters_and_bodies(stack: Stack) -> None:
    spec = Client(stack.url).get("/api/v1/openapi.json").json()
    op = spec["paths"]["/api/v1/grains/{grain_id}"]["patch"]
    assert {p["name"] for p in op["parameters"]} >= {"grain_id", "If-Match"}
    assert "application/json" in op["requestBody"]["content"]
    post = spec["paths"]["/api/v1/grains"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in post["parameters"]}
    assert "202" in spec["paths"]["/api/v1/apps"]["post"]["responses"]
