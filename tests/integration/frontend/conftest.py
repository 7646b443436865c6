"""Fixtures of the frontend integration tests: one platform, an admin, an admin token, notes."""

from __future__ import annotations

from collections.abc import Iterator
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
