"""The example apps: packed, verified, installed, then run from the installed package with
/usr/bin/python3 and driven through their real protocols (HTTP; CalDAV with `caldav`)."""

from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import verify_package
from tests.integration.package.conftest import EXAMPLES, host_command, pack_and_install
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def http(
    url: str, method: str = "GET", body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_static_site(author_key: Ed25519PrivateKey, tmp_path: Path, run_app: Any) -> None:
    installed = pack_and_install(EXAMPLES / "static-site", author_key, tmp_path)
    assert verify_package(tmp_path / "static-site.pkg").package_id == installed.package_id
    port = free_port()
    argv, env = host_command(installed.manifest, installed.files_dir, port)
    run_app(argv, env, port, tmp_path / "static.log")
    status, page = http(f"http://127.0.0.1:{port}/")
    assert status == 200 and b"Hello from a grain" in page
    status, _ = http(f"http://127.0.0.1:{port}/style.css")
    assert status == 200


def sandstorm(user: str, name: str, permissions: str) -> dict[str, str]:
    return {
        "X-Sandstorm-User-Id": user,
        "X-Sandstorm-Username": name,
        "X-Sandstorm-Permissions": permissions,
    }


def test_notes_app_roles_and_authors(
    stacks_dir: Path, author_key: Ed25519PrivateKey, tmp_path: Path, run_app: Any
) -> None:
    installed = pack_and_install(stacks_dir / "notes", author_key, tmp_path)
    m = installed.manifest
    assert [r.name for r in m.roles] == ["viewer", "editor"]
    assert m.default_share_role == "viewer"
    assert m.env["PYTHONPATH"] == "/opt/app/site-packages"
    assert (installed.files_dir / "site-packages" / "starlette").is_dir()
    data = tmp_path / "var"
    data.mkdir()
    port = free_port()
    argv, env = host_command(m, installed.files_dir, port)
    env["NOTES_DATA_DIR"] = str(data)  # the grain's /var
    env["HOME"] = str(data)
    run_app(argv, env, port, tmp_path / "notes.log")
    base = f"http://127.0.0.1:{port}"
    alice = sandstorm("u-alice", "Alice%20Liddell", "view,edit")
    bob = sandstorm("u-bob", "Bob", "view")

    status, body = http(f"{base}/api/whoami", headers=alice)
    assert json.loads(body) == {
        "user_id": "u-alice",
        "name": "Alice Liddell",
        "permissions": ["edit", "view"],
    }
    status, body = http(f"{base}/api/notes", "POST", {"title": "Plan", "body": "v1"}, alice)
    assert status == 201, body
    note = json.loads(body)
    assert note["author_name"] == "Alice Liddell"

    # A viewer reads but cannot write, whatever it sends.
    status, _ = http(f"{base}/api/notes", "POST", {"title": "x", "body": "y"}, bob)
    assert status == 403
    status, _ = http(f"{base}/api/notes/{note['id']}", "PUT", {"title": "x", "body": "y"}, bob)
    assert status == 403
    status, body = http(f"{base}/api/notes", headers=bob)
    assert status == 200 and [n["title"] for n in json.loads(body)] == ["Plan"]
    status, _ = http(f"{base}/api/notes", headers=sandstorm("u-eve", "Eve", ""))
    assert status == 403

    carol = sandstorm("u-carol", "Carol", "view,edit")
    status, body = http(
        f"{base}/api/notes/{note['id']}", "PUT", {"title": "Plan", "body": "v2"}, carol
    )
    assert status == 200 and json.loads(body)["author_name"] == "Carol"
    status, page = http(f"{base}/", headers=bob)
    assert status == 200
    assert b"last edited by Carol" in page and b"(viewer)" in page
    assert (data / "notes.sqlite3").is_file(), "data must live in the grain's /var"
    assert not any(p.name.endswith(".sqlite3") for p in installed.files_dir.rglob("*"))


def test_radicale_with_the_caldav_client(
    stacks_dir: Path, author_key: Ed25519PrivateKey, tmp_path: Path, run_app: Any
) -> None:
    import caldav  # the real client library of the real protocol

    installed = pack_and_install(stacks_dir / "third-party", author_key, tmp_path)
    assert installed.manifest.title == "Radicale"
    assert (installed.files_dir / "site-packages" / "radicale").is_dir()
    data = tmp_path / "var"
    data.mkdir()
    port = free_port()
    # Radicale's own command-line options override its config file, like a grain's /var would.
    argv, env = host_command(
        installed.manifest,
        installed.files_dir,
        port,
        ["--server-hosts", f"127.0.0.1:{port}", "--storage-filesystem-folder", str(data / "c")],
    )
    env["HOME"] = str(data)
    run_app(argv, env, port, tmp_path / "radicale.log")

    with caldav.DAVClient(url=f"http://127.0.0.1:{port}/", username="alice", password="x") as c:
        principal = c.principal()
        calendar = principal.make_calendar(name="Work")
        calendar.save_event(
            dtstart=datetime.datetime(2030, 1, 2, 10, 0),
            dtend=datetime.datetime(2030, 1, 2, 11, 0),
            summary="Standup",
        )
        found = calendar.search(
            start=datetime.datetime(2030, 1, 1),
            end=datetime.datetime(2030, 1, 3),
            event=True,
        )
        assert [str(e.component["summary"]) for e in found] == ["Standup"]
        assert [cal.get_display_name() for cal in principal.calendars()] == ["Work"]
    assert any((data / "c").rglob("*.ics")), "events must be stored in the grain's storage"
    assert os.access(installed.files_dir, os.R_OK)
