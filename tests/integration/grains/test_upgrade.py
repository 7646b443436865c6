"""A newer version of an installed app upgrades its grains on their next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from grainhouse_package import generate_key
from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import Platform, create, get, install
from .test_packages import _app_version

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def test_a_newer_version_upgrades_grains_on_their_next_start(
    platform: Platform, tmp_path: Path
) -> None:
    key = generate_key()
    v1 = install(platform.stub, _app_version(tmp_path, key, 1, "Upgrading"))
    grain = create(platform, v1)
    assert get(platform, grain.grain_id, "/whoami").status == 200  # running on version 1
    running = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain.grain_id))
    assert running.app_version == 1 and running.package_id == v1.package_id

    v2 = install(platform.stub, _app_version(tmp_path, key, 2, "Upgrading"))
    assert v2.upgraded and v2.app_id == v1.app_id
    # A running grain keeps its version until it restarts.
    still = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain.grain_id))
    assert still.package_id == v1.package_id

    platform.stub.StopGrain(pb.StopGrainRequest(grain_id=grain.grain_id), timeout=60)
    assert get(platform, grain.grain_id, "/whoami").status == 200  # the next start
    after = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain.grain_id))
    assert after.app_version == 2 and after.package_id == v2.package_id
