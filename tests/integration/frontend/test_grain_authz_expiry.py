"""When auth's cached decision for a grain origin expires (30 s), a burst of requests through
that origin asks auth once, not once per request (grain_proxy._decide)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .harness import Client, Stack
from .test_grain_events import grain_with_token, grpc_calls

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]

DECISION_SECONDS = 30  # auth's authorize_cache_seconds, the stack's default


def test_an_expired_decision_is_asked_for_once_by_a_burst(
    stack: Stack, admin_api: Client, probe_app: dict[str, Any]
) -> None:
    _, grain_api = grain_with_token(admin_api, probe_app["app_id"], "Expiry")
    assert grain_api.get("/whoami").status == 200  # the origin and its decision are cached
    time.sleep(DECISION_SECONDS + 1)
    before = grpc_calls(stack, "auth", "Authorize", "OK")
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: grain_api.get("/whoami").status, range(32)))
    assert statuses == [200] * 32
    assert grpc_calls(stack, "auth", "Authorize", "OK") - before == 1
