"""The streams of an origin (grain_streams.py): a burst of new connections to a grain costs
one grainmgr session and one or two OpenStream calls (keys come in batches), not one of each
per connection, and every request is served by that one session."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from .harness import Client, Stack
from .test_grain_events import grain_with_token, grainmgr_calls

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]

BURST = 24


def test_a_burst_of_new_connections_shares_one_session_and_batched_keys(
    stack: Stack, admin_api: Client, probe_app: dict[str, Any]
) -> None:
    _, grain_api = grain_with_token(admin_api, probe_app["app_id"], "Burst")
    sessions_before = grainmgr_calls(stack, "OpenSession", "OK")
    streams_before = grainmgr_calls(stack, "OpenStream", "OK")

    def one(_: int) -> tuple[int, str]:
        # A client of its own per request: a new connection each, all at once.
        got = Client(grain_api.base, token=grain_api.token).get("/whoami")
        return got.status, got.json()["headers"]["x-sandstorm-session-id"]

    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(one, range(BURST)))
    assert [status for status, _ in answers] == [200] * BURST
    # The grain was stopped: the burst started it, with one session for all of it.
    assert len({session for _, session in answers}) == 1
    assert grainmgr_calls(stack, "OpenSession", "OK") - sessions_before == 1
    # The others waited for that session (the grain's start), then took batched keys: one or
    # two calls for all of them, not one per connection.
    asks = grainmgr_calls(stack, "OpenStream", "OK") - streams_before
    assert 1 <= asks <= 3, f"{asks} OpenStream calls for {BURST} connections"
