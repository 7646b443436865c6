"""Grain origins are auth's, shared by every frontend: a second frontend process beside the
stack's own (same auth, grainmgr and NATS, its own port: two frontends behind a load balancer)
serves an origin opened through the first, and a logout or a revoked share closes it on both."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.stack import ExtraFrontend

from .harness import Client, Stack, guest_by_share_link, make_token, sign_up
from .test_grain_origins import origin_of

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


@pytest.fixture(scope="module")
def second(stack: Stack) -> Iterator[ExtraFrontend]:
    extra = ExtraFrontend(stack)
    extra.start()
    try:
        yield extra
    finally:
        extra.stop()


@pytest.fixture(scope="module")
def grain(probe_app: dict[str, Any], admin_api: Client) -> str:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Shared"})
    return str(made.json()["id"])


def through(client: Client, frontend_url: str, origin_url: str, path: str = "whoami") -> Any:
    """GET `origin_url + path` sent to `frontend_url`'s listener, with the origin's Host (what a
    load balancer in front of both frontends does)."""
    host = origin_url.split("/")[2]
    port = frontend_url.rsplit(":", 1)[1]
    return client.get(f"http://127.0.0.1:{port}/{path}", host=host)


def eventually(check: Any, what: str, timeout: float = 45) -> None:
    """Revocation events reach the other frontend over NATS: wait for it, never for a time."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_an_origin_opened_on_one_frontend_serves_on_the_other(
    admin: Client, grain: str, stack: Stack, second: ExtraFrontend
) -> None:
    url = origin_of(admin, grain)  # made through the stack's frontend
    on_b = through(admin, second.url, url)
    assert on_b.status == 200, on_b.text
    on_a = through(admin, stack.url, url)
    assert on_a.status == 200, on_a.text
    seen_b, seen_a = on_b.json()["headers"], on_a.json()["headers"]
    # One origin record: the same tab, the same identity, the same base path on both.
    for name in ("x-sandstorm-tab-id", "x-sandstorm-user-id", "x-sandstorm-base-path"):
        assert seen_b[name] == seen_a[name], name
    assert seen_b["x-sandstorm-base-path"] == url.rstrip("/")
    assert seen_b["x-sandstorm-username"] == "Ada%20Admin"
    # An origin opened on the second frontend (REST sessions too) serves on the first.
    token = make_token(admin, scope="read")
    made = Client(second.url, token=token).api("POST", f"/grains/{grain}/sessions")
    assert made.status == 201, made.text
    assert through(admin, stack.url, made.json()["url"]).status == 200


def test_logout_closes_the_origin_on_both_frontends(
    stack: Stack, admin: Client, probe_app: dict[str, Any], second: ExtraFrontend
) -> None:
    user = sign_up(stack, admin, "Lou Logout", "lou@example.org")
    made = user.form(f"/apps/{probe_app['app_id']}/new", {"title": "Lou's"}, csrf_from="/apps")
    assert made.status == 303, made.text[:300]
    grain_id = made.headers["location"].rsplit("/", 1)[1]
    url = origin_of(user, grain_id)
    assert through(user, stack.url, url).status == 200
    assert through(user, second.url, url).status == 200
    assert user.form("/logout", {}, csrf_from="/account").status == 303
    # Both frontends had the decision cached: the revocation event drops it on each, and auth
    # refuses the ended session (first a 401, then the origin is gone: 404 as an unknown one).
    eventually(
        lambda: through(user, second.url, url).status in (401, 404), "B still serves after logout"
    )
    eventually(
        lambda: through(user, stack.url, url).status in (401, 404), "A still serves after logout"
    )
    assert through(user, second.url, url).status == 404
    assert through(user, stack.url, url).status == 404


def test_revoking_a_share_closes_the_guest_origin_on_both_frontends(
    stack: Stack, admin_api: Client, grain: str, second: ExtraFrontend
) -> None:
    link, guest, _, url = guest_by_share_link(stack, admin_api, grain)
    on_b = through(guest, second.url, url)
    assert on_b.status == 200 and on_b.json()["headers"]["x-sandstorm-permissions"] == "view"
    assert through(guest, stack.url, url).status == 200
    assert admin_api.api("DELETE", f"/grants/{link['grant']['id']}").status == 200
    eventually(lambda: through(guest, second.url, url).status != 200, "B still serves the guest")
    eventually(lambda: through(guest, stack.url, url).status != 200, "A still serves the guest")
    assert through(guest, second.url, url).status == 404
    assert through(guest, stack.url, url).status == 404


def test_unknown_origins_get_the_same_answer_on_both(stack: Stack, second: ExtraFrontend) -> None:
    port = stack.url.rsplit(":", 1)[1]
    c = Client(stack.url)
    for frontend in (stack.url, second.url):
        for oid in ("0" * 32, "f" * 32, "short"):
            reply = through(c, frontend, f"http://ui-{oid}.localhost:{port}/", "")
            assert reply.status == 404, (frontend, oid, reply.text)
            assert "this grain session has ended" in reply.text


def test_unknown_origins_cost_auth_a_bounded_number_of_lookups(
    admin: Client, grain: str, stack: Stack, second: ExtraFrontend
) -> None:
    # Runs last in this module: it spends the lookup budget of 127.0.0.1 on the second frontend.
    port = stack.url.rsplit(":", 1)[1]
    known = origin_of(admin, grain)
    assert through(admin, second.url, known).status == 200  # now cached on the second frontend

    def unknown(_: int) -> Any:
        host = f"http://ui-{secrets.token_hex(16)}.localhost:{port}/"
        return through(Client(stack.url), second.url, host, "")

    # Far more lookups than a burst plus the refill of the time they take: some must wait.
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(unknown, range(300)))
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {404, 429}, statuses
    assert statuses[404] >= 1 and statuses[429] >= 1, statuses
    limited = next(r for r in replies if r.status == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert "too many unknown grain sessions" in limited.text
    # An origin the frontend knows costs auth nothing and is never limited.
    assert through(admin, second.url, known).status == 200
    # The budget comes back (wait for it, not for a time): the frontend is left as found.
    eventually(lambda: unknown(0).status == 404, "the lookup budget never came back", 60)
