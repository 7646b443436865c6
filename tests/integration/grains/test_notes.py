"""The notes example app (starlette + uvicorn from its Python stack) in a real grain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_package.stack import PythonStack, build_python_stack

from .conftest import (
    EXAMPLES,
    Platform,
    create,
    http,
    install,
    open_session,
    relay_connect,
    request_bytes,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


@pytest.fixture(scope="module")
def notes(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> object:
    """Built like `grainhouse app stack python` builds it (pip downloads its wheels)."""
    out = tmp_path_factory.mktemp("notes")
    build_python_stack(PythonStack(source_dir=EXAMPLES / "notes"), out / "app")
    pack_directory(out / "app", out / "notes.pkg", generate_key(), level=0)
    return install(platform.stub, out / "notes.pkg")


def test_notes_app_writes_and_reads_with_roles(
    platform: Platform, notes: object, tmp_path: Path
) -> None:
    grain = create(platform, notes)
    session = open_session(platform.stub, grain.grain_id)
    body = json.dumps({"title": "First", "body": "written through the relay"}).encode()
    with relay_connect(session.stream) as sock:
        made = http(
            sock,
            request_bytes(
                "POST",
                "/api/notes",
                session,
                body_len=len(body),
                extra="Content-Type: application/json\r\n",
            )
            + body,
        )
        assert made.status == 201, made.body
        assert made.json()["author_name"] == "Alice A"
        listed = http(sock, request_bytes("GET", "/api/notes", session)).json()
        assert [n["title"] for n in listed] == ["First"]
        # A viewer (the frontend sends only "view") may read but not write.
        refused = http(
            sock,
            request_bytes("POST", "/api/notes", session, body_len=len(body), permissions="view")
            + body,
        )
        assert refused.status == 403
    # The note is in the grain's own storage.
    store = platform.stack.data_dir / "grainmgr" / "grains" / grain.grain_id / "var"
    assert (store / "notes.sqlite3").is_file()
