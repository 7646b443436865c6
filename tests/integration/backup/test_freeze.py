"""An export holds a running grain still by FREEZING it, reads its /var in place, then thaws it.

Driven on grainmgr's ExportGrain directly, so a test can stop reading halfway and look at the
grain while the stream is open: frozen in its cgroup, its writer's counter standing still, no
staging copy anywhere; afterwards the same processes (same pids, no restart) carry on. A
client that cancels mid-stream gets the grain thawed too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grainhouse_proto import common_pb2
from grainhouse_proto import grainmgr_pb2 as gpb

from .conftest import (
    Platform,
    latest,
    new_grain,
    running_platform,
    start_writer,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]
# Far more than gRPC's flow-control windows hold: a client that stops reading stops grainmgr
# halfway through the stream. Sparse, so it costs no disk.
BIG_FILE_BYTES = 512 * 1024 * 1024
FREEZER_ROOT = Path("/sys/fs/cgroup/freezer")


@dataclass
class Busy:
    grain_id: str
    var: Path
    freezer: Path  # the grain's own v1 freezer cgroup directory


def freezer_state(busy: Busy) -> str:
    return (busy.freezer / "freezer.state").read_text().strip()


def pids(busy: Busy) -> set[int]:
    return {int(p) for p in (busy.freezer / "cgroup.procs").read_text().split()}


def wait_until(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def staging_entries(p: Platform) -> list[str]:
    roots = list(p.stack.data_dir.glob("*/staging"))
    assert roots, "grainmgr's staging root was not found"
    return [e.name for root in roots for e in root.iterdir()]


def start_busy(platform: Platform, tmp_path: Path) -> Busy:
    """A running writer grain with a big sparse file in its /var."""
    if not FREEZER_ROOT.is_dir():
        pytest.skip("this machine has no cgroup v1 freezer")
    grain, var = start_writer(platform, tmp_path, "Frozen")
    wait_until("the writer app did not write", lambda: latest(var) > 200)
    with (var / "big.bin").open("wb") as f:
        f.truncate(BIG_FILE_BYTES)
    found = list(FREEZER_ROOT.glob(f"**/{grain.grain_id}"))
    assert len(found) == 1, f"the grain's freezer cgroup: {found}"
    b = Busy(grain.grain_id, var, found[0])
    assert freezer_state(b) == "THAWED"
    return b


@pytest.fixture
def busy(platform: Platform, tmp_path: Path) -> Iterator[Busy]:
    b = start_busy(platform, tmp_path)
    try:
        yield b
    finally:
        (b.var / "big.bin").unlink(missing_ok=True)
        platform.grainmgr.StopGrain(gpb.StopGrainRequest(grain_id=b.grain_id), timeout=60)


def export(p: Platform, grain_id: str) -> Iterator[gpb.GrainArchivePart]:
    return p.grainmgr.ExportGrain(gpb.ExportGrainRequest(grain_id=grain_id), timeout=300)  # type: ignore[no-any-return]


def test_export_of_running_grain_freezes_it_and_reads_var_in_place(
    platform: Platform, busy: Busy
) -> None:
    before = pids(busy)
    assert before
    call = export(platform, busy.grain_id)
    parts = [next(call), next(call)]
    assert parts[0].WhichOneof("part") == "header"
    assert parts[1].WhichOneof("part") in ("file", "data")
    # Mid-stream: the grain is frozen, its writer stands still, nothing was copied.
    assert freezer_state(busy) == "FROZEN"
    counter = latest(busy.var)
    time.sleep(1.0)
    assert latest(busy.var) == counter, "the grain ran during the export"
    assert not [n for n in staging_entries(platform) if n.startswith("export-")]
    assert pids(busy) == before
    grain = platform.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=busy.grain_id), timeout=10)
    assert grain.state == gpb.GRAIN_STATE_RUNNING

    parts += list(call)
    assert parts[-1].WhichOneof("part") == "trailer"
    files = {p.file.path: p.file for p in parts if p.WhichOneof("part") == "file"}
    assert files["big.bin"].size_bytes == BIG_FILE_BYTES
    assert files["latest"].size_bytes > 0
    # Afterwards: thawed, the same processes (no restart) write on.
    wait_until("the grain was not thawed", lambda: freezer_state(busy) == "THAWED", 30)
    assert pids(busy) == before
    wait_until("the grain did not resume", lambda: latest(busy.var) > counter)
    assert not [n for n in staging_entries(platform) if n.startswith("export-")]


def test_cancelling_an_export_mid_stream_thaws_the_grain(platform: Platform, busy: Busy) -> None:
    before = pids(busy)
    call = export(platform, busy.grain_id)
    assert next(call).WhichOneof("part") == "header"
    next(call)
    assert freezer_state(busy) == "FROZEN"
    counter = latest(busy.var)
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    wait_until("a cancelled export left the grain frozen", lambda: freezer_state(busy) == "THAWED")
    wait_until("the grain did not resume", lambda: latest(busy.var) > counter)
    assert pids(busy) == before
    # The grain is free again: a second export runs to its end.
    (busy.var / "big.bin").unlink()
    parts = list(export(platform, busy.grain_id))
    assert parts[-1].WhichOneof("part") == "trailer"
    assert freezer_state(busy) == "THAWED"
    assert os.path.exists(busy.var / "latest")


# Housekeeping as eager as it gets: a grain idle for IDLE_STOP_SECONDS is stopped, and a bridge
# is pinged every half second (a ping unanswered for 10 s kills the grain).
IDLE_STOP_SECONDS = 12
HELD_SECONDS = 16  # frozen longer than both the idle time and the ping timeout


@pytest.fixture
def eager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    env = {
        "GRAINHOUSE_GRAINMGR_IDLE_STOP_SECONDS": str(IDLE_STOP_SECONDS),
        "GRAINHOUSE_GRAINMGR_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        "GRAINHOUSE_GRAINMGR_PING_INTERVAL_SECONDS": "0.5",
    }
    with running_platform(env, tmp_path_factory.mktemp("pkg")) as plat:
        yield plat


def test_housekeeping_leaves_a_frozen_grain_alone(eager: Platform, tmp_path: Path) -> None:
    busy = start_busy(eager, tmp_path)
    before = pids(busy)
    call = export(eager, busy.grain_id)
    assert next(call).WhichOneof("part") == "header"
    next(call)
    assert freezer_state(busy) == "FROZEN"
    time.sleep(HELD_SECONDS)  # housekeeping runs ~30 times meanwhile
    assert freezer_state(busy) == "FROZEN"
    assert pids(busy) == before, "a frozen grain was killed (ping) or stopped (idle)"
    counter = latest(busy.var)
    parts = list(call)
    assert parts[-1].WhichOneof("part") == "trailer"
    # Thawed, not stopped or restarted: its frozen time did not count as idle.
    wait_until("the grain did not resume", lambda: latest(busy.var) > counter, IDLE_STOP_SECONDS)
    assert pids(busy) == before
    grain = eager.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=busy.grain_id), timeout=10)
    assert grain.state == gpb.GRAIN_STATE_RUNNING


def test_a_stopped_grain_is_kept_from_starting_until_the_export_ends(
    platform: Platform, tmp_path: Path
) -> None:
    grain = new_grain(platform, "Stopped while exported")
    platform.grainmgr.StopGrain(gpb.StopGrainRequest(grain_id=grain.grain_id), timeout=60)
    var = platform.var_dir(grain.grain_id)
    with (var / "big.bin").open("wb") as f:
        f.truncate(BIG_FILE_BYTES)
    call = export(platform, grain.grain_id)
    assert next(call).WhichOneof("part") == "header"
    next(call)
    opened: list[object] = []

    def open_session() -> None:
        opened.append(
            platform.grainmgr.OpenSession(
                gpb.OpenSessionRequest(
                    grain_id=grain.grain_id,
                    identity=common_pb2.AppIdentity(user_id="u" * 32, display_name="U"),
                    permissions=["view"],
                    session_type=gpb.SESSION_TYPE_NORMAL,
                    tab_id="t1",
                    base_path="http://ui-test.localhost",
                ),
                timeout=120,
            )
        )

    opener = threading.Thread(target=open_session)
    opener.start()
    time.sleep(1.0)
    # The open waits (bounded) instead of starting the grain under the export.
    assert not opened
    state = platform.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=grain.grain_id), timeout=10)
    assert state.state == gpb.GRAIN_STATE_STOPPED
    assert list(call)[-1].WhichOneof("part") == "trailer"
    opener.join(120)
    assert opened, "the open did not go ahead once the export ended"
    state = platform.grainmgr.GetGrain(gpb.GetGrainRequest(grain_id=grain.grain_id), timeout=10)
    assert state.state == gpb.GRAIN_STATE_RUNNING
    (var / "big.bin").unlink()
    platform.grainmgr.StopGrain(gpb.StopGrainRequest(grain_id=grain.grain_id), timeout=60)
