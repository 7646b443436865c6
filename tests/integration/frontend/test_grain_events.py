"""grainmgr's grain events reach the frontend: after a grain stops, the next request through
an open origin goes straight to a new grainmgr session (grain_events.py), without first asking
for a stream of the session that ended with the grain."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .harness import Client, Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


def grainmgr_calls(stack: Stack, method: str, code: str) -> float:
    return grpc_calls(stack, "grainmgr", method, code)


def grpc_calls(stack: Stack, service: str, method: str, code: str) -> float:
    """How many `method` calls `service` answered with `code` so far (its own metrics)."""
    with urllib.request.urlopen(stack.services()[service]["metrics"], timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != f"grainhouse_{service}_grpc_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == {
                "method": method,
                "code": code,
            }:
                total += sample.value
    return total


def grain_with_token(admin_api: Client, app_id: str, title: str) -> tuple[str, Client]:
    """A new (stopped) grain of `app_id` and a client holding a viewer API token for it."""
    made = admin_api.api("POST", "/grains", {"app_id": app_id, "title": title})
    assert made.status == 201, made.text
    grain = str(made.json()["id"])
    token = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "viewer", "label": title})
    assert token.status == 201, token.text
    return grain, Client(token.json()["api_url"].rstrip("/"), token=token.json()["token"])


def wait_state(api: Client, grain_id: str, state: str) -> None:
    deadline = time.monotonic() + 60
    while api.api("GET", f"/grains/{grain_id}").json()["state"] != state:
        assert time.monotonic() < deadline, f"grain not {state}"
        time.sleep(0.05)


def test_a_stopped_grain_reopens_without_asking_for_a_dead_session(
    stack: Stack, admin_api: Client, probe_app: dict[str, Any]
) -> None:
    grain, grain_api = grain_with_token(admin_api, probe_app["app_id"], "Events")
    first = grain_api.get("/whoami")
    assert first.status == 200
    session = first.json()["headers"]["x-sandstorm-session-id"]
    for _ in range(2):
        assert admin_api.api("POST", f"/grains/{grain}/stop").status == 200
        wait_state(admin_api, grain, "stopped")
        time.sleep(1)  # the stop's event on its way over NATS (milliseconds here)
        dead_asks = grainmgr_calls(stack, "OpenStream", "NOT_FOUND")
        again = grain_api.get("/whoami")
        assert again.status == 200
        assert again.json()["headers"]["x-sandstorm-session-id"] != session  # a new session
        session = again.json()["headers"]["x-sandstorm-session-id"]
        assert grainmgr_calls(stack, "OpenStream", "NOT_FOUND") == dead_asks
