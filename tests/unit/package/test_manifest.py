"""The manifest: strict validation with messages that name the field, and a stable encoding."""

from __future__ import annotations

import json

import pytest

from grainhouse_package import PackageError, check_upgrade, parse_manifest, to_json
from tests.unit.package.conftest import MANIFEST, manifest_bytes

pytestmark = pytest.mark.unit

FULL = {
    **MANIFEST,
    "min_upgradable_version": 1,
    "permissions": [{"name": "view", "title": "View"}, {"name": "edit", "title": "Edit"}],
    "roles": [
        {"name": "viewer", "title": "Viewer", "permissions": ["view"]},
        {"name": "editor", "title": "Editor", "permissions": ["view", "edit"]},
    ],
    "default_share_role": "viewer",
    "api_path": "/api",
    "env": {"PYTHONPATH": "/opt/app/site-packages"},
    "icons": {"app": "icon.svg"},
    "description": "A test app",
    "license": "MIT",
}


def test_full_manifest_round_trips() -> None:
    m = parse_manifest(json.dumps(FULL).encode())
    assert m.roles[1].permissions == ("view", "edit")
    assert m.default_share_role == "viewer"
    assert m.listen.port == 8000
    assert parse_manifest(to_json(m)) == m
    assert to_json(parse_manifest(to_json(m))) == to_json(m)


def test_unix_socket_listen() -> None:
    m = parse_manifest(manifest_bytes(listen={"unix_socket": "/tmp/app.sock"}))
    assert m.listen.unix_socket == "/tmp/app.sock" and m.listen.port is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"titel": "x"}, "manifest.titel: unknown field"),
        ({"version": True}, "manifest.version: must be an integer"),
        ({"version": -1}, "manifest.version: must be between 0 and"),
        ({"version": 2**40}, "manifest.version: must be between 0 and"),
        ({"version": None}, "manifest.version: must be an integer, not null"),
        ({"title": "t" * 101}, "manifest.title: longer than 100"),
        ({"title": "  "}, "manifest.title: must not be empty"),
        ({"min_upgradable_version": 3}, "manifest.min_upgradable_version: 3 is above version 2"),
        ({"actions": []}, "manifest.actions: at least one action"),
        ({"actions": [{"noun": "x", "command": ["python3"]}]}, "command[0]: must be an absolute"),
        ({"actions": [{"noun": "x", "command": []}]}, "manifest.actions[0].command: must not be"),
        ({"actions": [{"noun": "x", "command": ["/a"], "x": 1}]}, "actions[0].x: unknown field"),
        ({"continue_command": "/bin/app"}, "manifest.continue_command: must be a list"),
        ({"listen": {"port": 80}}, "manifest.listen.port: must be between 1024 and 65535"),
        ({"listen": {}}, "manifest.listen: set exactly one of port, unix_socket"),
        ({"listen": {"port": 8000, "unix_socket": "/tmp/s"}}, "set exactly one"),
        ({"listen": {"unix_socket": "/etc/s"}}, "manifest.listen.unix_socket: must be a clean"),
        ({"listen": {"unix_socket": "/tmp/../etc/s"}}, "manifest.listen.unix_socket"),
        (
            {"roles": [{"name": "r", "title": "R", "permissions": []}]},
            "manifest.default_share_role: required when roles are set",
        ),
        (
            {
                "roles": [{"name": "r", "title": "R", "permissions": ["nope"]}],
                "default_share_role": "r",
            },
            "manifest.roles[0].permissions: 'nope' is not a declared permission",
        ),
        (
            {"roles": [{"name": "Bad Name", "title": "R", "permissions": []}]},
            "manifest.roles[0].name",
        ),
        ({"default_share_role": "ghost"}, "'ghost' is not a declared role"),
        ({"permissions": [{"name": "a", "title": "A"}] * 2}, "duplicate permission name 'a'"),
        ({"env": {"GRAINHOUSE_TOKEN": "x"}}, "manifest.env.GRAINHOUSE_TOKEN: the platform"),
        ({"env": {"1BAD": "x"}}, "is not a variable name"),
        ({"env": {"A": 1}}, "manifest.env.A: must be a string"),
        ({"icons": {"app": "../x.svg"}}, "manifest.icons.app: must be a clean relative path"),
        ({"icons": {"banner": "x.svg"}}, "unknown icon kind 'banner'"),
        ({"api_path": "api"}, "manifest.api_path: must start with '/'"),
        ({"format": 2}, "manifest.format: must be between 1 and 1"),
    ],
)
def test_invalid_fields_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PackageError) as err:
        parse_manifest(manifest_bytes(**changes))
    assert err.value.kind == "invalid"
    assert message in err.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "manifest: must be an object"),
        (b'{"title": "a", "title": "b"}', "duplicate key 'title'"),
        (b'{"version": NaN}', "NaN is not allowed"),
    ],
)
def test_malformed_documents(raw: bytes, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_manifest(raw)


def test_oversized_manifest_is_too_large() -> None:
    with pytest.raises(PackageError) as err:
        parse_manifest(b" " * 70_000)
    assert err.value.kind == "too_large"


def test_missing_required_field_is_named() -> None:
    doc = dict(MANIFEST)
    del doc["listen"]
    with pytest.raises(PackageError, match=r"manifest\.listen: required field is missing"):
        parse_manifest(json.dumps(doc).encode())


def _m(version: int, min_upgradable: int = 0) -> object:
    return parse_manifest(manifest_bytes(version=version, min_upgradable_version=min_upgradable))


def test_upgrade_rules() -> None:
    check_upgrade(None, _m(1))  # first install
    check_upgrade(_m(1), _m(2))  # type: ignore[arg-type]
    for older_or_equal in (1, 2):
        with pytest.raises(PackageError) as err:
            check_upgrade(_m(2), _m(older_or_equal))  # type: ignore[arg-type]
        assert err.value.kind == "conflict"
        assert "not newer than the installed version 2" in err.value.message
    with pytest.raises(PackageError) as err:
        check_upgrade(_m(1), _m(5, min_upgradable=3))  # type: ignore[arg-type]
    assert err.value.kind == "conflict"
    assert "only upgrades from version 3 or later" in err.value.message
    check_upgrade(_m(3), _m(5, min_upgradable=3))  # type: ignore[arg-type]
