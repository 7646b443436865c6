"""Small, pure pieces of the frontend edge: hosts, CSRF, API-host credentials, idempotency."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from grainhouse_frontend import api as apimod
from grainhouse_frontend.grain_proxy import bearer_from
from grainhouse_frontend.kvstore import MemoryStore
from grainhouse_frontend.origins import Origins
from grainhouse_frontend.pages import safe_next
from grainhouse_frontend.rest_io import etag_of, idempotent
from grainhouse_frontend.web_session import CookieNames, csrf_for_session

pytestmark = pytest.mark.unit


def test_grain_hosts_are_recognised_and_the_platform_is_not() -> None:
    o = Origins("*.localhost:6080")
    oid = "0123456789abcdef" * 2  # auth makes them (auth origins.new_origin_id): 32 hex
    assert o.host_kind(f"ui-{oid}.localhost:6080") == ("ui", oid)
    assert o.host_kind(f"UI-{oid}.LOCALHOST:6080") == ("ui", oid)
    assert o.host_kind("api.localhost:6080") == ("api", "")
    assert o.host_kind("localhost:6080") is None
    assert o.host_kind("evil.localhost:6080") is None
    assert o.host_kind(f"ui-{oid}.localhost:9999") is None
    assert o.host_kind("ui-short.localhost:6080") == ("ui", "")  # a grain host, but no origin


def test_csrf_token_is_bound_to_the_session() -> None:
    a, b = csrf_for_session("ghs_one"), csrf_for_session("ghs_two")
    assert a != b and a == csrf_for_session("ghs_one") and "ghs_one" not in a


def test_cookie_names_use_host_prefix_only_on_https() -> None:
    assert CookieNames.for_url("https://x.org").session == "__Host-gh_session"
    assert CookieNames.for_url("http://localhost:6080").session == "gh_session"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/grain/x", "/grain/x"), ("//evil.example", "/"), ("https://evil", "/"), ("/\\evil", "/")],
)
def test_login_redirects_stay_local(value: str, expected: str) -> None:
    assert safe_next(value) == expected


def test_api_host_accepts_bearer_and_basic_password() -> None:
    assert bearer_from({b"authorization": b"Bearer ghg_abc"}) == "ghg_abc"
    basic = base64.b64encode(b"whoever:ghg_xyz")
    assert bearer_from({b"authorization": b"Basic " + basic}) == "ghg_xyz"
    assert bearer_from({b"authorization": b"Basic !!!"}) == ""
    assert bearer_from({}) == ""


def test_etag_ignores_volatile_fields() -> None:
    doc = {"id": "g", "title": "A", "state": "running", "size_bytes": 1}
    assert etag_of(doc) == etag_of({**doc, "state": "stopped", "size_bytes": 9})
    assert etag_of(doc) != etag_of({**doc, "title": "B"})


def _request(key: str, body: bytes = b"{}") -> Request:
    scope = {"type": "http", "method": "POST", "path": "/api/v1/grains", "raw_path": b"",
             "query_string": b"", "headers": [(b"idempotency-key", key.encode())]}  # fmt: skip
    return Request(scope)


async def test_idempotency_replays_and_refuses_a_changed_body() -> None:
    store = MemoryStore()
    calls: list[int] = []

    async def run() -> Response:
        calls.append(1)
        return JSONResponse({"n": len(calls)}, status_code=201)

    first = await idempotent(store, _request("k"), "acc", run, "fp1")
    again = await idempotent(store, _request("k"), "acc", run, "fp1")
    other = await idempotent(store, _request("k"), "acc", run, "fp2")
    someone = await idempotent(store, _request("k"), "acc2", run, "fp1")
    assert json.loads(bytes(first.body)) == json.loads(bytes(again.body)) == {"n": 1}
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert json.loads(bytes(someone.body)) == {"n": 2}  # keys are per caller


async def test_server_errors_are_not_remembered() -> None:
    store = MemoryStore()
    answers = [500, 201]

    async def run() -> Response:
        return JSONResponse({}, status_code=answers.pop(0))

    assert (await idempotent(store, _request("k"), "a", run, "f")).status_code == 500
    assert (await idempotent(store, _request("k"), "a", run, "f")).status_code == 201


def test_openapi_paths_all_have_security_and_operation_ids() -> None:
    deps: Any = apimod.Deps(identity=None, grainmgr=None, peers={})  # type: ignore[arg-type]
    _, table = apimod.build_routes(deps)
    spec = apimod.openapi(table)
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) >= 20
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert op["security"] == [{"bearer": []}], path
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(__import__("re").findall(r"{(\w+)}", path)), path
