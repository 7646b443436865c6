"""A grain that writes garbage on its control channel (fd 3) loses the channel, nothing more."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import capnp
import pytest

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr.control import BridgeClient, GrainEnds
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, SpawnSpec

from .conftest import refusing_backend

pytestmark = pytest.mark.integration

GARBAGE = """
import os, time
try:
    for _ in range(256):
        os.write(3, os.urandom(65536))
except OSError:
    pass
time.sleep(120)
"""


@pytest.fixture
def launcher() -> Iterator[tuple[Launcher, Path]]:
    root = Path(tempfile.mkdtemp(prefix="gh-hostile-", dir="/tmp"))
    root.chmod(0o711)
    for d in ("pkg", "var"):
        (root / d).mkdir()
    launcher = Launcher.start(
        LauncherSettings(
            allowed_roots=(str(root),), cgroup_name=f"grainhouse-test-{uuid.uuid4().hex[:8]}"
        )
    )
    try:
        yield launcher, root
    finally:
        launcher.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_garbage_on_fd3_ends_the_connection(launcher: tuple[Launcher, Path]) -> None:
    la, root = launcher
    async with capnp.kj_loop():
        ends = GrainEnds.make()
        await la.spawn(
            SpawnSpec(
                grain_id="hostile",
                argv=["/usr/bin/python3", "-c", GARBAGE],
                env={},
                package_dir=str(root / "pkg"),
                var_dir=str(root / "var"),
                log_path=str(root / "log"),
                pass_fds=(ends.control_theirs.fileno(), ends.streams_theirs.fileno()),
            )
        )
        ends.close_theirs()
        client = BridgeClient(ends)
        await client.connect(refusing_backend())
        with pytest.raises(GrainhouseError):
            await asyncio.wait_for(client.ping(), 60)
        assert client.disconnected is not None
        await asyncio.wait_for(asyncio.shield(client.disconnected), 60)
        client.close()
        status = await la.kill("hostile")
        assert status is not None and status.signal == 9
