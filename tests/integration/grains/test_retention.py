"""Trash retention on its own platform (retention of 2 s): expired trash is deleted for good."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import grpc
import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import grainmgr_pb2 as pb
from grainhouse_proto import grainmgr_pb2_grpc

from .conftest import HERE, Stack, install, make_data_root, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-retention")]


@pytest.fixture(scope="module")
def short_retention(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, grainmgr_pb2_grpc.GrainManagerStub]]:
    root = make_data_root()
    stack = Stack(root, {"GRAINHOUSE_GRAINMGR_TRASH_RETENTION_SECONDS": "2"})
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
