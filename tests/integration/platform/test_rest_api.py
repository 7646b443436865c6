"""The REST API's edge: bearer tokens checked by auth, problem+json errors, OpenAPI."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from .conftest import GRAINHOUSE, Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("platform-stack")]


def call(stack: Stack, path: str, token: str | None = None) -> tuple[int, dict, dict]:
    base = "http://" + stack.services()["frontend"]["listen"]
    req = urllib.request.Request(base + path)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.fixture(scope="module")
def admin_token(stack: Stack) -> str:
    stack.wait_all_healthy()
    out = subprocess.run(
        [GRAINHOUSE, "admin", "api-token", "--data-dir", str(stack.data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return str(json.loads(out.stdout)["token"])


def test_me_with_an_admin_token(stack: Stack, admin_token: str) -> None:
    status, _, body = call(stack, "/api/v1/me", admin_token)
    assert status == 200
    assert body["is_admin"] is True and body["scope"] == "admin"
    assert body["credential_id"].startswith("tok_")
    assert admin_token not in json.dumps(body)


@pytest.mark.parametrize("token", [None, "", "ghp_not-a-real-token", "Basic abc"])
def test_missing_or_bad_token_is_401_problem_json(stack: Stack, token: str | None) -> None:
    status, headers, body = call(stack, "/api/v1/me", token)
    assert status == 401
    assert headers["content-type"] == "application/problem+json"
    assert headers.get("www-authenticate", "").startswith("Bearer")
    assert body["status"] == 401 and body["title"] and body["detail"]
    assert set(body) >= {"type", "title", "status", "detail"}


def test_unknown_api_route_is_404_problem(stack: Stack) -> None:
    status, headers, body = call(stack, "/api/v1/no-such-thing")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert "/api/v1/no-such-thing" in body["detail"]


def test_admin_status_lists_services(stack: Stack, admin_token: str) -> None:
    status, _, body = call(stack, "/api/v1/admin/status", admin_token)
    assert status == 200
    assert set(body["services"]) == {"auth", "grainmgr", "backup"}


def test_openapi_document_describes_every_route(stack: Stack) -> None:
    status, _, spec = call(stack, "/api/v1/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.1")
    assert {"/api/v1/me", "/api/v1/apps", "/api/v1/admin/status"} <= set(spec["paths"])
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op["summary"] and op["operationId"], path
            assert any(code.startswith("2") for code in op["responses"]), path
            assert op["security"] == [{"bearer": []}], path
