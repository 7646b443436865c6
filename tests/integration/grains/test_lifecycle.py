"""Grain lifecycle on real grains: create, cold/warm open, single start, idle stop, crash,
stop/trash/restore/delete, logs, NATS events."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import nats
import pytest

from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import (
    IDLE_SECONDS,
    Platform,
    create,
    get,
    http,
    open_session,
    relay_connect,
    relay_dial,
    request_bytes,
    wait_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def grain_dir(platform: Platform, grain_id: str) -> Path:
    return platform.stack.data_dir / "grainmgr" / "grains" / grain_id


def test_create_makes_record_and_storage(platform: Platform) -> None:
    grain = create(platform, platform.probe, title="My probe")
    assert len(grain.grain_id) >= 26  # >= 128 bits in base32
    assert grain.state == pb.GRAIN_STATE_STOPPED
    assert grain.title == "My probe"
    assert grain.app_title == "Probe"
    assert grain.package_id == platform.probe.package_id
    assert (grain_dir(platform, grain.grain_id) / "var").is_dir()
    untitled = create(platform, platform.probe)
    assert untitled.title == "Untitled Probe"
    assert untitled.grain_id != grain.grain_id
    mine = platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id="owner-1")).grains
    assert {grain.grain_id, untitled.grain_id} <= {g.grain_id for g in mine}
    renamed = platform.stub.UpdateGrain(pb.UpdateGrainRequest(grain_id=grain.grain_id, title="B"))
    assert renamed.title == "B"


def test_create_refuses_unknown_app_and_action(platform: Platform) -> None:
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.CreateGrain(pb.CreateGrainRequest(app_id="nope", owner_account_id="o"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        create(platform, platform.probe, action_name="spreadsheet")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.GetGrain(pb.GetGrainRequest(grain_id="a" * 32))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_cold_open_then_warm_requests_see_identity(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    assert session.grain.state == pb.GRAIN_STATE_RUNNING
    assert [r.name for r in session.view_info.roles] == ["viewer", "editor"]
    with relay_connect(session.stream) as sock:
        first = http(sock, request_bytes("GET", "/whoami", session)).json()
        # keep-alive: several requests on one long-lived stream
        again = [http(sock, request_bytes("GET", "/whoami", session)).json() for _ in range(5)]
    h = first["headers"]
    assert h["x-sandstorm-session-id"] == session.session_id
    assert h["x-sandstorm-user-id"] == "a" * 32
    assert h["host"] == "ui-test.localhost"
    assert first["greeting"] == "hello from the manifest"
    assert first["grainhouse_env"] == []  # the bridge's own settings never reach the app
    assert {a["boot"] for a in again} == {first["boot"]}
    # a second stream of the same session
    ticket = platform.stub.OpenStream(
        pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id)
    )
    with relay_connect(ticket) as sock:
        assert http(sock, request_bytes("GET", "/whoami", session)).json()["boot"] == first["boot"]


def test_open_stream_issues_a_batch_of_one_time_keys(platform: Platform) -> None:
    """OpenStream's count: one call, several keys, each opening exactly one stream of the
    session; more than 64 is refused with a readable message."""
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    one = platform.stub.OpenStream(
        pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id)
    )
    assert one.stream_key_secret and list(one.more_stream_key_secrets) == []
    batch = platform.stub.OpenStream(
        pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id, count=3)
    )
    keys = [batch.stream_key_secret, *batch.more_stream_key_secrets]
    assert len(set(keys)) == 3 and one.stream_key_secret not in keys
    for key in keys:
        ticket = pb.StreamTicket(relay_address=batch.relay_address, stream_key_secret=key)
        with relay_connect(ticket) as sock:
            whoami = http(sock, request_bytes("GET", "/whoami", session)).json()
            assert whoami["headers"]["x-sandstorm-session-id"] == session.session_id
        with pytest.raises(ConnectionError):  # used up
            relay_connect(ticket)
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.OpenStream(
            pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id, count=65)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 64" in (info.value.details() or "")


def test_static_site_example_serves_its_page(platform: Platform) -> None:
    grain = create(platform, platform.static)
    page = get(platform, grain.grain_id, "/")
    assert page.status == 200
    assert b"<" in page.body


def test_stream_key_is_one_time(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    relay_connect(session.stream).close()
    with pytest.raises(ConnectionError):
        relay_connect(session.stream)
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.OpenStream(pb.OpenStreamRequest(grain_id=grain.grain_id, session_id="x"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Unknown keys and garbage get no answer at all, just a closed connection.
    for line in (b"GRAINHOUSE-RELAY/1 " + b"A" * 43 + b"\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        with relay_dial(session.stream.relay_address) as sock:
            sock.sendall(line)
            assert sock.recv(100) == b""


def test_twenty_simultaneous_opens_start_one_process(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    with ThreadPoolExecutor(20) as pool:
        boots = list(
            pool.map(lambda _: get(platform, grain.grain_id, "/whoami").json()["boot"], range(20))
        )
    assert len(set(boots)) == 1
    logs = read_logs(platform, grain.grain_id)
    assert logs.count(b"[bridge] started the app") == 1


def read_logs(platform: Platform, grain_id: str) -> bytes:
    chunks = platform.stub.StreamLogs(
        pb.StreamLogsRequest(grain_id=grain_id, backlog_bytes=1 << 20), timeout=30
    )
    return b"".join(c.data for c in chunks)


def test_idle_grain_stops_and_restarts_on_next_use(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    boot1 = get(platform, grain.grain_id, "/whoami").json()["boot"]
    stopped = wait_state(platform, grain.grain_id, pb.GRAIN_STATE_STOPPED, timeout=IDLE_SECONDS * 6)
    assert stopped.size_bytes >= 0
    boot2 = get(platform, grain.grain_id, "/whoami").json()["boot"]
    assert boot2 != boot1


def test_open_stream_keeps_grain_alive(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    with relay_connect(session.stream) as sock:
        boot = http(sock, request_bytes("GET", "/whoami", session)).json()["boot"]
        time.sleep(IDLE_SECONDS + 2)
        assert http(sock, request_bytes("GET", "/whoami", session)).json()["boot"] == boot


def test_crash_is_detected_and_recovered_on_next_use(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    boot1 = get(platform, grain.grain_id, "/whoami").json()["boot"]
    session = open_session(platform.stub, grain.grain_id)
    with relay_connect(session.stream) as sock:
        sock.sendall(request_bytes("GET", "/crash", session))
        assert sock.recv(100) == b""  # the app died mid-request: the stream just closes
    crashed = wait_state(platform, grain.grain_id, pb.GRAIN_STATE_CRASHED)
    assert crashed.last_error == "exit status 3"
    assert b"the app exited with status 3" in read_logs(platform, grain.grain_id)
    boot2 = get(platform, grain.grain_id, "/whoami").json()["boot"]
    assert boot2 != boot1


def test_stop_restart_trash_restore_delete(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    gid = grain.grain_id
    get(platform, gid, "/write?name=keep&data=kept")
    assert (
        platform.stub.StopGrain(pb.StopGrainRequest(grain_id=gid)).state == pb.GRAIN_STATE_STOPPED
    )
    assert (
        platform.stub.StopGrain(pb.StopGrainRequest(grain_id=gid)).state == pb.GRAIN_STATE_STOPPED
    )
    restarted = platform.stub.RestartGrain(pb.RestartGrainRequest(grain_id=gid))
    assert restarted.state == pb.GRAIN_STATE_RUNNING
    assert get(platform, gid, "/read?name=keep").json()["data"] == "kept"

    trashed = platform.stub.TrashGrain(pb.TrashGrainRequest(grain_id=gid))
    assert trashed.state == pb.GRAIN_STATE_TRASHED
    assert trashed.trash_expires_at.seconds - trashed.trashed_at.seconds == 30 * 86400
    with pytest.raises(grpc.RpcError) as info:
        open_session(platform.stub, gid)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id="owner-1")).grains
    assert gid not in {g.grain_id for g in listed}
    only = platform.stub.ListGrains(pb.ListGrainsRequest(only_trashed=True)).grains
    assert gid in {g.grain_id for g in only}

    restored = platform.stub.RestoreGrain(pb.RestoreGrainRequest(grain_id=gid))
    assert restored.state == pb.GRAIN_STATE_STOPPED
    assert not restored.HasField("trashed_at")
    assert get(platform, gid, "/read?name=keep").json()["data"] == "kept"

    with pytest.raises(grpc.RpcError) as info:
        platform.stub.DeleteGrain(pb.DeleteGrainRequest(grain_id=gid))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    platform.stub.DeleteGrain(pb.DeleteGrainRequest(grain_id=gid, skip_trash=True))
    assert not grain_dir(platform, gid).exists()
    with pytest.raises(grpc.RpcError) as info:
        platform.stub.GetGrain(pb.GetGrainRequest(grain_id=gid))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_logs_can_be_followed(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    follow = platform.stub.StreamLogs(
        pb.StreamLogsRequest(grain_id=grain.grain_id, follow=True), timeout=60
    )
    get(platform, grain.grain_id, "/whoami")
    seen = b""
    for chunk in follow:
        seen += chunk.data
        if b"listens on" in seen:
            break
    follow.cancel()
    assert b"[bridge] started the app" in seen


def test_events_are_published(platform: Platform) -> None:
    nats_url = platform.stack.status()["services"]["nats"]["nats"]

    async def scenario() -> list[tuple[str, dict[str, object]]]:
        nc = await nats.connect(nats_url)
        got: list[tuple[str, dict[str, object]]] = []

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            got.append((msg.subject, json.loads(msg.data)))

        await nc.subscribe("grainhouse.grainmgr.grain.>", cb=on_msg)
        await nc.flush()
        loop = asyncio.get_running_loop()
        grain = await loop.run_in_executor(None, create, platform, platform.probe)
        gid = grain.grain_id
        await loop.run_in_executor(None, get, platform, gid, "/whoami")
        for call, req in (
            (platform.stub.TrashGrain, pb.TrashGrainRequest(grain_id=gid)),
            (platform.stub.RestoreGrain, pb.RestoreGrainRequest(grain_id=gid)),
            (platform.stub.DeleteGrain, pb.DeleteGrainRequest(grain_id=gid, skip_trash=True)),
        ):
            await loop.run_in_executor(None, call, req)
        await asyncio.sleep(0.5)
        await nc.close()
        return [(s, e) for s, e in got if e["grain_id"] == gid]

    events = asyncio.run(scenario())
    names = [subject.rsplit(".", 1)[1] for subject, _ in events]
    assert names == ["created", "started", "stopped", "trashed", "restored", "deleted"]
    assert all(e["owner_account_id"] == "owner-1" for _, e in events)
