"""Grain WebSockets through the frontend: a real grain (the probe app's /ws echo) behind uvicorn."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .harness import Client, Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


@pytest.fixture(scope="module")
def grain(probe_app: dict[str, Any], admin_api: Client) -> str:
    made = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "WS probe"})
    assert made.status == 201, made.text
    return str(made.json()["id"])


def origin_of(browser: Client, path: str) -> str:
    page = browser.get(path)
    assert page.status == 200, page.text[:300]
    found = re.search(r'src="(http://ui-[0-9a-f]{32}\.localhost:\d+/)"', page.text)
    assert found, page.text
    return found.group(1)


@contextmanager
def ws(
    url: str, origin: str | None = "same", headers: dict[str, str] | None = None
) -> Iterator[ClientConnection]:
    """A WebSocket to `url` (http://host:port/path), dialled on loopback as a browser would
    (`*.localhost` resolves there); `origin` "same" sends the url's own origin."""
    scheme_host, _, path = url.partition("://")[2].partition("/")
    host = scheme_host
    port = int(host.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent_origin = f"http://{host}" if origin == "same" else origin
    with connect(
        f"ws://{host}/{path}",
        sock=sock,
        origin=sent_origin,  # type: ignore[arg-type]
        additional_headers=headers or {},
        open_timeout=90,
        close_timeout=5,
    ) as conn:
        yield conn


def refused_status(url: str, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as caught, ws(url, **kw):
        pass
    return caught.value.response.status_code


def test_messages_both_ways_with_identity_and_close_code(admin: Client, grain: str) -> None:
    url = origin_of(admin, f"/grain/{grain}")
    host = url.split("/")[2]
    plain = admin.get(url + "whoami").json()["headers"]
    forged = {
        "X-Sandstorm-User-Id": "forged",
        "X-Sandstorm-Permissions": "admin,everything",
        "Authorization": "Bearer ghp_platform-token",
        "Cookie": "gh_session=stolen; app_pref=dark",
    }
    with ws(url + "ws", headers=forged) as conn:
        assert conn.recv(timeout=30) == "hello"
        conn.send("whoami")
        seen = json.loads(conn.recv(timeout=30))
        # Identity set by the platform, the same as on plain HTTP; the client's forgeries gone.
        assert seen["x-sandstorm-user-id"] == plain["x-sandstorm-user-id"] != "forged"
        assert set(seen["x-sandstorm-permissions"].split(",")) == {"view", "edit"}
        assert seen["x-sandstorm-username"] == "Ada%20Admin"
        assert seen["x-sandstorm-session-type"] == "normal"
        assert seen["x-sandstorm-base-path"] == url.rstrip("/")
        assert seen["host"] == host
        assert "authorization" not in seen
        assert seen.get("cookie") == "app_pref=dark"
        assert seen["upgrade"].lower() == "websocket"
        # Frames both ways: text stays text, binary stays binary.
        for i in range(10):
            conn.send(f"message {i}")
            assert conn.recv(timeout=30) == f"echo:message {i}"
        conn.send(b"\x00\xffbinary")
        assert conn.recv(timeout=30) == b"echo:\x00\xffbinary"
        big = "x" * 200_000  # several frames' worth each way
        conn.send(big)
        assert conn.recv(timeout=30) == "echo:" + big
        # The grain pings; the frontend answers it (the app reports what came back).
        conn.send("ping")
        assert conn.recv(timeout=30) == "pong:are you there"
        # The grain closes with its own code and reason: the client sees both.
        conn.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            conn.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_foreign_origin_is_refused_on_every_handshake(admin: Client, grain: str) -> None:
    url = origin_of(admin, f"/grain/{grain}")
    assert refused_status(url + "ws", origin="http://evil.example") == 403
    port = url.rsplit(":", 1)[1].rstrip("/")
    other_grain_origin = f"http://ui-{'1' * 32}.localhost:{port}"
    assert refused_status(url + "ws", origin=other_grain_origin) == 403
    with ws(url + "ws") as conn:  # the same origin is let in
        assert conn.recv(timeout=30) == "hello"


def test_absent_and_revoked_sessions_are_refused(
    stack: Stack, admin_api: Client, grain: str
) -> None:
    port = stack.url.rsplit(":", 1)[1]
    assert refused_status(f"http://ui-{'0' * 32}.localhost:{port}/ws") == 404
    link = admin_api.api("POST", f"/grains/{grain}/shares", {"role": "viewer"}).json()
    guest = Client(stack.url)
    url = origin_of(guest, link["url"])
    with ws(url + "ws") as conn:
        assert conn.recv(timeout=30) == "hello"
        conn.send("whoami")
        assert json.loads(conn.recv(timeout=30))["x-sandstorm-permissions"] == "view"
        assert admin_api.api("DELETE", f"/grants/{link['grant']['id']}").status == 200
        # The open socket is closed once the frontend sees the access ended.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                conn.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert refused_status(url + "ws") in (401, 403, 404)


def test_api_host_websocket_with_a_grain_token(stack: Stack, admin_api: Client, grain: str) -> None:
    made = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "editor", "label": "ws"})
    assert made.status == 201, made.text
    token, api_url = made.json()["token"], made.json()["api_url"]
    bearer = {"Authorization": f"Bearer {token}"}
    with ws(api_url + "/ws", origin=None, headers=bearer) as conn:
        assert conn.recv(timeout=30) == "hello"
        conn.send("whoami")
        seen = json.loads(conn.recv(timeout=30))
        assert seen["x-sandstorm-session-type"] == "api" and "authorization" not in seen
        conn.send(b"\x01\x02")
        assert conn.recv(timeout=30) == b"echo:\x01\x02"
    assert refused_status(api_url + "/ws", origin=None) == 401
    assert refused_status(api_url + "/ws", origin="http://evil.example", headers=bearer) == 403
