"""Fixtures of the frontend integration tests: one platform, an admin, an admin token, notes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    FRONTEND_ENV,
    Client,
    Stack,
    build_notes,
    install_package,
    make_token,
    running_stack,
    setup_admin,
)

UPSTREAM_APP = Path(__file__).resolve().parent / "grain_upstream_app"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack(FRONTEND_ENV) as s:
        yield s


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Client:
    return setup_admin(stack)


@pytest.fixture(scope="session")
def admin_api(stack: Stack, admin: Client) -> Client:
    return Client(stack.url, token=make_token(admin))


@pytest.fixture(scope="session")
def notes_app(admin_api: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return install_package(admin_api, build_notes(tmp_path_factory.mktemp("notes")))


@pytest.fixture(scope="session")
def probe_app(admin_api: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from .harness import build_probe

    return install_package(admin_api, build_probe(tmp_path_factory.mktemp("probe")))


@pytest.fixture(scope="session")
def api_host(admin_api: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(API host, grain token) of a grain of grain_upstream_app (answers well or badly on
    purpose, and shows the request head it got)."""
    from grainhouse_package import generate_key, pack_directory

    out = tmp_path_factory.mktemp("upstream")
    pack_directory(UPSTREAM_APP, out / "upstream.pkg", generate_key(), level=0)
    app = install_package(admin_api, out / "upstream.pkg")
    made = admin_api.api("POST", "/grains", {"app_id": app["app_id"], "title": "Upstream"})
    assert made.status == 201, made.text
    grain = made.json()["id"]
    token = admin_api.api("POST", f"/grains/{grain}/api-tokens", {"role": "viewer", "label": "u"})
    assert token.status == 201, token.text
    return token.json()["api_url"].split("/")[2], token.json()["token"]
