"""A cold open on a real grain: the app starts beside the bridge, the row is right when the
reply leaves, and grainmgr says once where the start's time went (bench/bench_grains.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from grainhouse_grainmgr.grains import START_STEPS, STEP_NAMES
from grainhouse_proto import grainmgr_pb2 as pb
from tests.support.procs import grain_processes

from .conftest import Platform, create, http, open_session, relay_connect, request_bytes

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def start_lines(platform: Platform, grain_id: str) -> list[dict[str, float]]:
    log_file = platform.stack.data_dir / "logs" / "grainmgr.log"
    found = []
    for line in log_file.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        msg = json.loads(line).get("msg", "")
        if msg.startswith(f"{START_STEPS} {grain_id} "):
            found.append({k: float(v) for k, v in (kv.split("=") for kv in msg.split()[3:])})
    return found


def bridges_of(grainmgr_pid: int) -> list[int]:
    """Host pids of the bridges under this grainmgr (other stacks may run on the machine)."""
    return [pid for pid, _ in grain_processes(grainmgr_pid)]


def test_a_cold_open_records_the_start_and_says_where_its_time_went(
    platform: Platform,
) -> None:
    grain = create(platform, platform.probe)
    before = time.monotonic()
    session = open_session(platform.stub, grain.grain_id)
    # The state write overlapped the session's opening, but it is done when the reply leaves.
    row = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain.grain_id))
    assert row.state == session.grain.state == pb.GRAIN_STATE_RUNNING
    assert row.last_used_at == session.grain.last_used_at
    assert row.last_used_at.seconds > 0
    assert session.grain.package_id == row.package_id != ""
    with relay_connect(session.stream) as sock:
        assert http(sock, request_bytes("GET", "/whoami", session)).status == 200
    time.sleep(0.5)  # the log line reaches the file through the supervisor
    (steps,) = start_lines(platform, grain.grain_id)
    assert before <= steps["at"] <= time.monotonic()
    stamps = [steps[name] for name, _ in STEP_NAMES]
    assert stamps == sorted(stamps)
    assert 0 < steps["checked"] < steps["spawned"] < steps["listening"]
    # A warm open (and its use) logs nothing more: one line per cold start.
    again = open_session(platform.stub, grain.grain_id)
    assert again.grain.state == pb.GRAIN_STATE_RUNNING
    assert again.grain.last_used_at.ToNanoseconds() >= row.last_used_at.ToNanoseconds()
    time.sleep(0.5)
    assert len(start_lines(platform, grain.grain_id)) == 1


def test_the_sandbox_starts_the_app_and_the_bridge_adopts_it(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    open_session(platform.stub, grain.grain_id)
    probes = 0
    for bridge in bridges_of(platform.grainmgr_pid):
        children = Path(f"/proc/{bridge}/task/{bridge}/children").read_text().split()
        if not any(
            b"/opt/app/server.py" in Path(f"/proc/{c}/cmdline").read_bytes() for c in children
        ):
            continue  # another app's grain (the probe's command is absolute: /usr/bin/python3)
        probes += 1
        # The app is pid 2 of the grain: started by its init just before the init became
        # the bridge, which was told so, and is the bridge's only child.
        environ = Path(f"/proc/{bridge}/environ").read_bytes().split(b"\0")
        assert b"GRAINHOUSE_CHILD_PID=2" in environ
        assert len(children) == 1
        status = Path(f"/proc/{children[0]}/status").read_text()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "2"
    assert probes >= 1
