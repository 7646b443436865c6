"""Grain traffic in the frontend's HTTP metrics: counted with the fixed `grain:*` route labels,
and no label ever carries a grain id, an origin id, a token or a grain host."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import Client, Stack
from .test_grain_websocket import refused_status, ws

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]
FAMILY = "grainhouse_frontend_http_requests"  # the parser drops the counter's `_total`


@pytest.fixture(scope="module")
def grain(probe_app: dict[str, Any], admin_api: Client) -> str:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Counted"})
    assert made.status == 201, made.text
    return str(made.json()["id"])


def scrape(stack: Stack) -> str:
    with urllib.request.urlopen(stack.services()["frontend"]["metrics"], timeout=10) as resp:
        return str(resp.read().decode())


def count(text: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != FAMILY:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def origin_of(admin: Client, grain_id: str) -> str:
    page = admin.get(f"/grain/{grain_id}")
    assert page.status == 200, page.text[:300]
    found = re.search(r'src="(http://ui-([0-9a-f]{32})\.localhost:\d+/)"', page.text)
    assert found, page.text
    return found.group(1)


def test_grain_requests_are_counted_without_ids(
    stack: Stack, admin: Client, admin_api: Client, grain: str
) -> None:
    url = origin_of(admin, grain)
    origin_id = url.split("ui-", 1)[1].split(".", 1)[0]
    port = stack.url.rsplit(":", 1)[1]
    made = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "viewer", "label": "m"})
    assert made.status == 201, made.text
    token, api_url = made.json()["token"], made.json()["api_url"]
    before = scrape(stack)

    # Through the session origin, the API host, an unknown origin and a WebSocket handshake.
    assert admin.get(url + "whoami").status == 200
    assert admin.get(url + "whoami?x=1").status == 200
    c = Client(stack.url)
    assert c.get(api_url + "/whoami", headers={"Authorization": f"Bearer {token}"}).status == 200
    assert c.get(api_url + "/whoami").status == 401
    assert c.get(f"http://ui-{'0' * 32}.localhost:{port}/").status == 404
    with ws(url + "ws") as conn:
        assert conn.recv(timeout=30) == "hello"
    assert refused_status(url + "ws", origin="http://evil.example") == 403

    after = scrape(stack)
    ui = {"route": "grain:ui", "method": "GET"}
    assert count(after, **ui, status="200") - count(before, **ui, status="200") >= 2
    assert count(after, **ui, status="404") - count(before, **ui, status="404") >= 1
    api = {"route": "grain:api", "method": "GET"}
    assert count(after, **api, status="200") - count(before, **api, status="200") >= 1
    assert count(after, **api, status="401") - count(before, **api, status="401") >= 1
    sock = {"route": "grain:websocket", "status": "101"}
    assert count(after, **sock) - count(before, **sock) >= 1
    refused = {"route": "grain:websocket", "status": "403"}
    assert count(after, **refused) - count(before, **refused) >= 1
    assert 'grainhouse_frontend_http_request_duration_seconds_count{route="grain:ui"}' in after

    # Bounded labels: nothing of the grain, its origin, its token or its host.
    for secret in (grain, origin_id, token, "ui-", "api.localhost", "whoami", "0" * 32):
        assert secret not in after, secret
    # The platform's own routes keep their templates.
    assert count(after, route="/grain/{grain_id}") >= 1
