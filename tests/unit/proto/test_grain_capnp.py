"""grain.capnp loads with pycapnp and states the contract the platform relies on.

Owns: nothing (reads proto/grain.capnp).
Trusts: pycapnp's schema loader.
Never: starts RPC (no kj_loop needed: loading a schema is plain parsing).
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

IDENTITY_HEADERS = [
    "X-Sandstorm-User-Id",
    "X-Sandstorm-Username",
    "X-Sandstorm-Preferred-Handle",
    "X-Sandstorm-Permissions",
    "X-Sandstorm-Session-Id",
    "X-Sandstorm-Tab-Id",
    "X-Sandstorm-Session-Type",
    "X-Sandstorm-Base-Path",
]

# pycapnp aborts the whole process (C++ terminate) on a schema parse error, so the schema is
# loaded in a child interpreter: a broken file fails this test instead of killing the worker.
_DUMP = textwrap.dedent(
    """
    import json, sys
    import capnp
    g = capnp.load(sys.argv[1])

    def rules(lst):
        return [{"name": r.name, "match": str(r.match), "reason": r.reason} for r in lst]

    def methods(iface):
        return sorted(iface.schema.methods.keys())

    print(json.dumps({
        "identity": rules(g.identityHeaders),
        "stripped": rules(g.strippedRequestHeaders),
        "overridden": rules(g.overriddenResponseHeaders),
        "cookie_prefix": g.platformCookiePrefix,
        "session_types": [g.sessionTypeNormal, g.sessionTypeApi],
        "bridge_fd": g.bridgeFd,
        "stream_key_timeout": g.streamKeyTimeoutSeconds,
        "methods": {
            name: methods(getattr(g, name))
            for name in ("Bridge", "SessionHandle", "Platform", "WakeLock", "PlatformBackend")
        },
        "session_params": sorted(g.SessionParams.schema.fieldnames),
    }))
    """
)


@pytest.fixture(scope="module")
def grain_schema(proto_dir: Path, python_executable: str) -> dict[str, Any]:
    proc = subprocess.run(
        [python_executable, "-c", _DUMP, str(proto_dir / "grain.capnp")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_file_id_is_fresh_with_top_bit_set(proto_dir: Path) -> None:
    first = (proto_dir / "grain.capnp").read_text().splitlines()[0]
    match = re.fullmatch(r"@0x([0-9a-f]{16});", first)
    assert match, first
    file_id = int(match.group(1), 16)
    assert file_id >> 63 == 1
    # Never one of Sandstorm's ids: the contract is ours, not a copy.
    assert file_id not in {0xA8CB0F2F1A756B32, 0xC7205D6D32C7B040}


def test_identity_headers_are_exactly_sandstorms_names(grain_schema: dict[str, Any]) -> None:
    assert [r["name"] for r in grain_schema["identity"]] == IDENTITY_HEADERS
    assert all(r["match"] == "exact" for r in grain_schema["identity"])


def test_every_header_rule_has_a_reason(grain_schema: dict[str, Any]) -> None:
    for key in ("identity", "stripped", "overridden"):
        for rule in grain_schema[key]:
            assert len(rule["reason"]) > 20, rule


def test_client_cannot_forge_identity_or_leak_platform_credentials(
    grain_schema: dict[str, Any],
) -> None:
    stripped = {(r["name"].lower(), r["match"]) for r in grain_schema["stripped"]}
    assert ("x-sandstorm-", "prefix") in stripped
    assert ("cookie", "exact") in stripped
    assert ("authorization", "exact") in stripped
    # Every identity header is covered by a stripping rule, so a client-sent copy never passes.
    for name in IDENTITY_HEADERS:
        assert any(
            name.lower() == n if m == "exact" else name.lower().startswith(n) for n, m in stripped
        ), name
    assert grain_schema["cookie_prefix"]


def test_control_plane_interfaces(grain_schema: dict[str, Any]) -> None:
    methods = grain_schema["methods"]
    assert methods["Bridge"] == sorted(
        ["getViewInfo", "newSession", "openStream", "ping", "shutdown"]
    )
    assert methods["Platform"] == ["getIdentity", "getStorageUsage", "log", "stayAwake"]
    # What the bridge forwards to grainmgr: the two calls only grainmgr can answer.
    assert methods["PlatformBackend"] == ["getStorageUsage", "stayAwake"]
    assert methods["SessionHandle"] == ["close"]
    assert methods["WakeLock"] == ["release"]
    assert grain_schema["bridge_fd"] == 3
    assert grain_schema["stream_key_timeout"] > 0
    assert grain_schema["session_types"] == ["normal", "api"]
    assert {"sessionId", "identity", "permissions", "tabId", "sessionType", "basePath"} <= set(
        grain_schema["session_params"]
    )
