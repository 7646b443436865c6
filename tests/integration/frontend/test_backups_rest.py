"""Backups through the REST API on a real stack: create → task → list → download (whole and in
ranges) → restore into a new grain with the same content; hostile uploads refused by name."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.parse
import zipfile
from typing import Any

import pytest

from .harness import Client, Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]
CONTENT = "grain data é ✓ " * 50
BIG = 300_000  # bytes of a second file, so ranges cross the transport's blocks


def wait(api: Client, task: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while task["state"] == "running":
        assert time.monotonic() < deadline, task
        time.sleep(0.3)
        reply = api.api("GET", f"/tasks/{task['id']}")
        assert reply.status == 200, reply.text
        task = reply.json()
    return task


def grain_api(stack: Stack, api: Client, grain_id: str) -> tuple[Client, str]:
    made = api.api("POST", f"/grains/{grain_id}/api-tokens", {"role": "editor", "label": "t"})
    assert made.status == 201, made.text
    return Client(stack.url, token=made.json()["token"]), made.json()["api_url"]


def write_files(stack: Stack, api: Client, grain_id: str) -> None:
    c, url = grain_api(stack, api, grain_id)
    reply = c.get(f"{url}/write?name=hello.txt&data={urllib.parse.quote(CONTENT)}")
    assert reply.status == 200, reply.text
    reply = c.get(f"{url}/fill?name=big.bin&n={BIG}")
    assert reply.status == 200, reply.text


def read_file(stack: Stack, api: Client, grain_id: str, name: str) -> Any:
    c, url = grain_api(stack, api, grain_id)
    reply = c.get(f"{url}/read?name={name}")
    assert reply.status in (200, 404), reply.text
    return reply.json()["data"]


def make_backup(api: Client, grain_id: str) -> dict[str, Any]:
    reply = api.api("POST", f"/grains/{grain_id}/backups", {"note": "test"})
    assert reply.status == 202, reply.text
    task = wait(api, reply.json())
    assert task["state"] == "succeeded", task
    got = api.api("GET", f"/backups/{task['result']['backup_id']}")
    assert got.status == 200, got.text
    return dict(got.json())


def upload(api: Client, data: bytes, title: str = "") -> Any:
    q = f"?title={title}" if title else ""
    return api.request("POST", f"/api/v1/restores{q}", data, {"Content-Type": "application/zip"})


@pytest.fixture(scope="module")
def backed_up(stack: Stack, admin_api: Client, probe_app: dict[str, Any]) -> dict[str, Any]:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Backed"})
    gid = made.json()["id"]
    write_files(stack, admin_api, gid)
    return {"grain": gid, "backup": make_backup(admin_api, gid)}


def test_create_is_a_task_and_idempotent(admin_api: Client, backed_up: dict[str, Any]) -> None:
    gid = backed_up["grain"]
    first = admin_api.api("POST", f"/grains/{gid}/backups", {}, **{"Idempotency-Key": "k-1"})
    assert first.status == 202, first.text
    assert first.headers["location"] == f"/api/v1/tasks/{first.json()['id']}"
    again = admin_api.api("POST", f"/grains/{gid}/backups", {}, **{"Idempotency-Key": "k-1"})
    assert again.status == 202 and again.json()["id"] == first.json()["id"]
    done = wait(admin_api, first.json())
    assert done["kind"] == "backup" and done["state"] == "succeeded", done
    assert done["result"]["grain_id"] == gid
    listed = admin_api.api("GET", f"/backups?grain_id={gid}").json()["items"]
    assert done["result"]["backup_id"] in {b["id"] for b in listed}
    assert backed_up["backup"]["id"] in {b["id"] for b in listed}
    assert all(b["grain_id"] == gid for b in listed)


def test_download_whole_equals_two_ranges_stitched(
    admin_api: Client, backed_up: dict[str, Any]
) -> None:
    b = backed_up["backup"]
    url = f"/api/v1/backups/{b['id']}/download"
    whole = admin_api.get(url)
    assert whole.status == 200
    assert whole.headers["content-type"] == "application/zip"
    assert whole.headers["accept-ranges"] == "bytes"
    assert int(whole.headers["content-length"]) == b["size_bytes"] == len(whole.body)
    assert whole.headers["etag"] == f'"{b["sha256"]}"'
    assert hashlib.sha256(whole.body).hexdigest() == b["sha256"]
    assert zipfile.ZipFile(io.BytesIO(whole.body)).testzip() is None
    cut = b["size_bytes"] // 3 + 7
    head = admin_api.get(url, headers={"Range": f"bytes=0-{cut - 1}"})
    tail = admin_api.get(url, headers={"Range": f"bytes={cut}-", "If-Range": whole.headers["etag"]})
    assert head.status == tail.status == 206
    assert head.headers["content-range"] == f"bytes 0-{cut - 1}/{b['size_bytes']}"
    assert tail.headers["content-range"] == f"bytes {cut}-{b['size_bytes'] - 1}/{b['size_bytes']}"
    assert int(tail.headers["content-length"]) == b["size_bytes"] - cut
    assert head.body + tail.body == whole.body
    suffix = admin_api.get(url, headers={"Range": "bytes=-100"})
    assert suffix.status == 206 and suffix.body == whole.body[-100:]
    # If-Range with a stale validator: the whole archive, not a range of something else.
    stale = admin_api.get(url, headers={"Range": f"bytes={cut}-", "If-Range": '"0000"'})
    assert stale.status == 200 and stale.body == whole.body


def test_unsatisfiable_range_is_416(admin_api: Client, backed_up: dict[str, Any]) -> None:
    b = backed_up["backup"]
    reply = admin_api.get(
        f"/api/v1/backups/{b['id']}/download", headers={"Range": f"bytes={b['size_bytes']}-"}
    )
    assert reply.status == 416
    assert reply.headers["content-range"] == f"bytes */{b['size_bytes']}"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["status"] == 416


def test_restore_of_the_download_makes_a_new_grain_with_the_content(
    stack: Stack, admin_api: Client, backed_up: dict[str, Any]
) -> None:
    archive = admin_api.get(f"/api/v1/backups/{backed_up['backup']['id']}/download").body
    reply = upload(admin_api, archive, "Restored%20copy")
    assert reply.status == 202, reply.text
    task = wait(admin_api, reply.json())
    assert task["kind"] == "restore" and task["state"] == "succeeded", task
    new = task["result"]["grain_id"]
    assert new != backed_up["grain"] and task["result"]["url"].endswith(f"/grain/{new}")
    grain = admin_api.api("GET", f"/grains/{new}").json()
    assert grain["title"] == "Restored copy"
    assert read_file(stack, admin_api, new, "hello.txt") == CONTENT
    assert read_file(stack, admin_api, new, "big.bin") == "q" * BIG


def test_hostile_archive_fails_with_a_problem_naming_the_reason(
    admin_api: Client, backed_up: dict[str, Any]
) -> None:
    archive = admin_api.get(f"/api/v1/backups/{backed_up['backup']['id']}/download").body
    buf = io.BytesIO(archive)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("data/../../../etc/cron.d/evil", b"* * * * * root id\n")
    before = {g["id"] for g in admin_api.api("GET", "/grains?limit=200").json()["items"]}
    reply = upload(admin_api, buf.getvalue())
    assert reply.status == 202, reply.text
    task = wait(admin_api, reply.json())
    assert task["state"] == "failed", task
    err = task["error"]
    assert err["status"] == 422 and err["reason"] == "zip_slip", err
    assert err["detail"].startswith("zip_slip:") and "cron.d" in (err["entry"] or "")
    assert err["type"].endswith("/archive_refused") and err["retryable"] is False
    after = {g["id"] for g in admin_api.api("GET", "/grains?limit=200").json()["items"]}
    assert after == before  # no partial grain
    garbage = wait(admin_api, upload(admin_api, b"this is not a zip" * 10).json())
    assert garbage["error"]["reason"] == "truncated_or_corrupt", garbage


def test_upload_without_length_and_unknown_ids(admin_api: Client) -> None:
    empty = admin_api.request("POST", "/api/v1/restores", b"", {"Content-Type": "application/zip"})
    assert empty.status == 400 and "Content-Length" in empty.json()["detail"]
    assert admin_api.api("GET", "/backups/" + "0" * 32).status == 404
    assert admin_api.get("/api/v1/backups/" + "0" * 32 + "/download").status == 404
    assert admin_api.api("GET", "/tasks/bkt_" + "0" * 32).status == 404
    assert admin_api.api("DELETE", "/backups/" + "0" * 32).status == 404


def test_other_accounts_cannot_see_or_delete(
    stack: Stack, admin: Client, admin_api: Client, backed_up: dict[str, Any]
) -> None:
    from .harness import make_token, sign_up

    other = Client(
        stack.url, token=make_token(sign_up(stack, admin, "Bo", "bo@example.org"), "write")
    )
    bid = backed_up["backup"]["id"]
    assert bid not in {b["id"] for b in other.api("GET", "/backups").json()["items"]}
    assert other.api("GET", f"/backups/{bid}").status == 404
    assert other.get(f"/api/v1/backups/{bid}/download").status == 404
    assert other.api("DELETE", f"/backups/{bid}").status == 404
    assert other.api("POST", f"/grains/{backed_up['grain']}/backups", {}).status == 404
    assert admin_api.api("GET", f"/backups/{bid}").status == 200


def test_schedules_create_list_delete(admin_api: Client, backed_up: dict[str, Any]) -> None:
    gid = backed_up["grain"]
    rules = {"keep_last": 3, "keep_weekly": 2}
    made = admin_api.api(
        "POST", "/backup-schedules", {"grain_id": gid, "frequency": "daily", "retention": rules}
    )
    assert made.status == 201, made.text
    s = made.json()
    assert s["grain_id"] == gid and s["frequency"] == "daily" and not s["all_grains"]
    assert s["retention"] == {"keep_last": 3, "keep_daily": 0, "keep_weekly": 2}
    assert s["next_run_at"]
    listed = admin_api.api("GET", f"/backup-schedules?grain_id={gid}").json()["items"]
    assert s["id"] in {x["id"] for x in listed}
    bad = admin_api.api("POST", "/backup-schedules", {"frequency": "daily", "grain_id": gid,
                                                     "all_grains": True})  # fmt: skip
    assert bad.status == 400
    none = admin_api.api("POST", "/backup-schedules", {"all_grains": True, "frequency": "weekly",
                                                      "retention": {"keep_last": 0}})  # fmt: skip
    assert none.status == 400
    assert admin_api.api("DELETE", f"/backup-schedules/{s['id']}").status == 204
    assert admin_api.api("DELETE", f"/backup-schedules/{s['id']}").status == 404


def test_delete_backup(admin_api: Client, backed_up: dict[str, Any]) -> None:
    b = make_backup(admin_api, backed_up["grain"])
    assert admin_api.api("DELETE", f"/backups/{b['id']}").status == 204
    assert admin_api.api("GET", f"/backups/{b['id']}").status == 404
