"""A platform of its own with short limits: trash retention of 2 s (expired trash is deleted for
good) and a 4 MiB /var quota (a grain over it cannot write more, and the platform says so)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Iterator

import grpc
import nats
import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import grainmgr_pb2 as pb
from grainhouse_proto import grainmgr_pb2_grpc

from .conftest import (
    HERE,
    Stack,
    http,
    install,
    make_data_root,
    open_session,
    relay_connect,
    request_bytes,
    wait_serving,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-retention")]


@pytest.fixture(scope="module")
def short_retention(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, grainmgr_pb2_grpc.GrainManagerStub]]:
    root = make_data_root()
    stack = Stack(
        root,
        {
            "GRAINHOUSE_GRAINMGR_TRASH_RETENTION_SECONDS": "2",
            "GRAINHOUSE_GRAINMGR_GRAIN_VAR_QUOTA_BYTES": str(4 << 20),
        },
    )
    channel = None
    try:
        stack.start()
        channel = grpc.insecure_channel(stack.status()["services"]["grainmgr"]["grpc"])
        stub = grainmgr_pb2_grpc.GrainManagerStub(channel)
        wait_serving(stub)
        yield stack, stub
    finally:
        if channel is not None:
            channel.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_expired_trash_is_purged(
    short_retention: tuple[Stack, grainmgr_pb2_grpc.GrainManagerStub],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack, stub = short_retention
    out = tmp_path_factory.mktemp("pkg")
    pack_directory(HERE / "testapp", out / "probe.pkg", generate_key(), level=0)
    app = install(stub, out / "probe.pkg")
    kept = stub.CreateGrain(pb.CreateGrainRequest(app_id=app.app_id, owner_account_id="o"))
    doomed = stub.CreateGrain(pb.CreateGrainRequest(app_id=app.app_id, owner_account_id="o"))
    trashed = stub.TrashGrain(pb.TrashGrainRequest(grain_id=doomed.grain_id))
    assert trashed.trash_expires_at.seconds - trashed.trashed_at.seconds == 2
    storage = stack.data_dir / "grainmgr" / "grains" / doomed.grain_id
    deadline = time.monotonic() + 60
    while True:
        try:
            stub.GetGrain(pb.GetGrainRequest(grain_id=doomed.grain_id))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        assert time.monotonic() < deadline, "expired trash was not purged"
        time.sleep(0.2)
    assert not storage.exists()
    assert stub.GetGrain(pb.GetGrainRequest(grain_id=kept.grain_id)).state == pb.GRAIN_STATE_STOPPED


def test_grain_over_quota_cannot_write_and_the_platform_reports_it(
    short_retention: tuple[Stack, grainmgr_pb2_grpc.GrainManagerStub],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack, stub = short_retention
    services = stack.status()["services"]
    out = tmp_path_factory.mktemp("quota")
    pack_directory(HERE / "testapp", out / "probe.pkg", generate_key(), level=0)
    app = install(stub, out / "probe.pkg")
    grain = stub.CreateGrain(pb.CreateGrainRequest(app_id=app.app_id, owner_account_id="o"))

    def call(path: str) -> tuple[int, dict]:
        session = open_session(stub, grain.grain_id)
        with relay_connect(session.stream) as sock:
            got = http(sock, request_bytes("GET", path, session))
        return got.status, got.json()

    async def scenario() -> dict:
        nc = await nats.connect(services["nats"]["nats"])
        seen: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            event = json.loads(msg.data)
            if event["grain_id"] == grain.grain_id and not seen.done():
                seen.set_result(event)

        await nc.subscribe("grainhouse.grainmgr.grain.over_quota", cb=on_msg)
        await nc.flush()
        # 3 + 3 MiB: each write fits the per-file limit, together they pass the 4 MiB quota.
        assert await asyncio.to_thread(call, "/fill?name=a&n=3145728") == (200, {"ok": True})
        await asyncio.to_thread(call, "/fill?name=b&n=3145728")
        event = await asyncio.wait_for(seen, 60)
        await nc.close()
        return event

    event = asyncio.run(scenario())
    assert event["limit_bytes"] == 4 << 20 and event["used_bytes"] > 4 << 20
    status, body = call("/fill?name=c&n=10")
    assert status == 507 and body["errno"] == "EROFS"
    with urllib.request.urlopen(services["grainmgr"]["metrics"], timeout=10) as resp:
        text = resp.read().decode()
    assert "grainhouse_grainmgr_grain_quota_exceeded_total 1.0" in text
    log = (stack.data_dir / "logs" / "grainmgr.log").read_text()
    assert grain.grain_id in log and "over its disk quota" in log
