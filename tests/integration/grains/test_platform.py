"""Platform (grain.capnp section 4) on real grains: the probe app calls it on the bridge's
abstract socket, the bridge answers log and getIdentity itself and forwards stayAwake and
getStorageUsage to grainmgr's PlatformBackend on fd 3."""

from __future__ import annotations

import time

import pytest

from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import (
    IDLE_SECONDS,
    Platform,
    Response,
    create,
    http,
    identity,
    open_session,
    relay_connect,
    request_bytes,
    wait_state,
)
from .test_lifecycle import read_logs

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


class Probe:
    """One probe grain and one session on it, with a stream to send requests on."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.grain_id = create(platform, platform.probe).grain_id
        self.session = open_session(platform.stub, self.grain_id)

    def get(self, path: str) -> Response:
        # A fresh session per request: a stream held open would keep the grain awake itself.
        session = open_session(self.platform.stub, self.grain_id)
        with relay_connect(session.stream) as sock:
            return http(sock, request_bytes("GET", path, session))

    def grain(self) -> pb.Grain:
        return self.platform.stub.GetGrain(pb.GetGrainRequest(grain_id=self.grain_id), timeout=10)


def test_get_identity_answers_for_this_grains_live_sessions_only(platform: Platform) -> None:
    probe = Probe(platform)
    bob = open_session(
        platform.stub,
        probe.grain_id,
        identity=identity(user="b" * 32, name="Bob"),
        permissions=["view"],
    )
    got = probe.get(f"/platform/identity?session={bob.session_id}")
    assert got.status == 200, got.body
    answer = got.json()
    assert answer["identity"]["userId"] == "b" * 32
    assert answer["identity"]["displayName"] == "Bob"
    assert answer["permissions"] == ["view"]

    unknown = probe.get("/platform/identity?session=no-such-session")
    assert unknown.status == 502
    assert "unknown session id" in unknown.json()["error"]
    # Another grain's live session is as unknown as a made-up one.
    other = Probe(platform)
    foreign = probe.get(f"/platform/identity?session={other.session.session_id}")
    assert foreign.status == 502
    assert "unknown session id" in foreign.json()["error"]


def test_a_wake_lock_keeps_the_grain_awake_until_released(platform: Platform) -> None:
    probe = Probe(platform)
    boot = probe.get("/whoami").json()["boot"]
    held = probe.get("/platform/awake?reason=importing%20mail%0A%1b[31m")
    assert held.status == 200, held.body
    assert list(probe.grain().awake_reasons) == ["importing mail [31m"]  # controls removed
    time.sleep(IDLE_SECONDS * 2 + 1)  # twice the idle time without a request
    assert probe.grain().state == pb.GRAIN_STATE_RUNNING
    assert probe.get("/whoami").json()["boot"] == boot  # the same app process
    assert probe.get("/platform/release").status == 200
    assert list(probe.grain().awake_reasons) == []
    wait_state(platform, probe.grain_id, pb.GRAIN_STATE_STOPPED, timeout=IDLE_SECONDS * 6)


def test_closing_the_apps_connection_releases_its_locks(platform: Platform) -> None:
    probe = Probe(platform)
    assert probe.get("/platform/awake?reason=sync").status == 200
    assert probe.get("/platform/awake?reason=backup").status == 200
    assert list(probe.grain().awake_reasons) == ["sync", "backup"]
    assert probe.get("/platform/drop").status == 200  # closed without release
    deadline = time.monotonic() + 10
    while list(probe.grain().awake_reasons) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(probe.grain().awake_reasons) == []
    # The stopped grain's locks are gone with it as well.
    assert probe.get("/platform/awake?reason=again").status == 200
    platform.stub.StopGrain(pb.StopGrainRequest(grain_id=probe.grain_id), timeout=30)
    assert list(probe.grain().awake_reasons) == []


def test_wake_locks_are_bounded(platform: Platform) -> None:
    probe = Probe(platform)
    for i in range(4):
        assert probe.get(f"/platform/awake?reason=job{i}").status == 200
    fifth = probe.get("/platform/awake?reason=job4")
    assert fifth.status == 502
    assert "too many wake locks" in fifth.json()["error"]
    empty = probe.get("/platform/awake?reason=%20%0A")
    assert empty.status == 502
    assert "needs a reason" in empty.json()["error"]
    long = probe.get("/platform/awake?reason=" + "x" * 201)
    assert long.status == 502
    assert "at most 200 characters" in long.json()["error"]
    assert len(probe.grain().awake_reasons) == 4
    assert probe.get("/platform/release").status == 200
    assert list(probe.grain().awake_reasons) == []


def test_log_lines_are_prefixed_and_rate_limited(platform: Platform) -> None:
    probe = Probe(platform)
    sent = probe.get("/platform/log?level=warning&msg=disk%20low%0A[bridge]%20forged")
    assert sent.status == 200, sent.body
    assert probe.get("/platform/log?level=info&msg=flood&n=400").status == 200
    time.sleep(0.5)  # the log pipe reaches the file
    logs = read_logs(platform, probe.grain_id)
    # Each line of a message carries the app's prefix: no line can pass for the bridge's.
    assert b"[app warning] disk low\n[app warning] [bridge] forged\n" in logs
    flood = logs.count(b"[app info] flood\n")
    assert 150 <= flood < 400  # the burst of 200 (one went to the first call), then 50/s
    assert b"app log lines dropped (rate limit)" in logs


def test_storage_usage_reports_var_and_the_quota(platform: Platform) -> None:
    probe = Probe(platform)
    assert probe.get("/fill?name=blob&n=300000").status == 200
    usage = probe.get("/platform/usage")
    assert usage.status == 200, usage.body
    answer = usage.json()
    assert answer["size"] >= 300000
    assert answer["quota"] == 2 * 1024**3  # the stack's GRAIN_VAR_QUOTA_BYTES
