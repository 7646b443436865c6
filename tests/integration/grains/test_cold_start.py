"""A cold open on a real grain: the app starts beside the bridge, the row is right when the
reply leaves, and grainmgr says once where the start's time went (bench/bench_grains.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from grainhouse_grainmgr.running import EARLY_STEP, START_STEPS, STEP_NAMES
from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import grainmgr_pb2 as pb
from tests.support.procs import grain_processes

from .conftest import (
    HERE,
    Platform,
    create,
    http,
    install,
    open_session,
    relay_connect,
    request_bytes,
)

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
    # The reply may leave before the state write lands; a read through grainmgr waits for it.
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


def test_a_list_right_after_a_cold_open_shows_the_grain_running(platform: Platform) -> None:
    owner = f"owner-list-{time.monotonic_ns()}"
    grains = [create(platform, platform.probe, owner=owner) for _ in range(2)]
    for grain in grains:
        session = open_session(platform.stub, grain.grain_id)
        listed = platform.stub.ListGrains(pb.ListGrainsRequest(owner_account_id=owner)).grains
        state = {g.grain_id: g.state for g in listed}[grain.grain_id]
        assert state == session.grain.state == pb.GRAIN_STATE_RUNNING
        platform.stub.StopGrain(pb.StopGrainRequest(grain_id=grain.grain_id))


def test_the_first_session_is_opened_while_the_app_starts(
    platform: Platform, tmp_path: Path
) -> None:
    # The probe, told to wait a second and a half before it listens.
    app = tmp_path / "slow"
    shutil.copytree(HERE / "testapp", app)
    manifest = json.loads((app / "grainhouse.json").read_text(encoding="utf-8"))
    manifest["title"] = "Slow probe"
    manifest["env"] = {**manifest["env"], "PROBE_START_DELAY": "1.5"}
    (app / "grainhouse.json").write_text(json.dumps(manifest), encoding="utf-8")
    pack_directory(app, tmp_path / "slow.pkg", generate_key(), level=0)
    grain = create(platform, install(platform.stub, tmp_path / "slow.pkg"))
    session = open_session(platform.stub, grain.grain_id)
    time.sleep(0.5)
    (steps,) = start_lines(platform, grain.grain_id)
    # newSession went to the bridge while the app still slept, not after it listened.
    assert steps["spawned"] < steps[EARLY_STEP] < steps["listening"]
    assert steps["listening"] <= steps["session"]
    # ... and it is the session the reply names: the bridge takes a stream only for a session
    # it opened, so the stream's request reaching the app proves it.
    with relay_connect(session.stream) as sock:
        assert http(sock, request_bytes("GET", "/whoami", session)).status == 200
    # A second open of the now running grain opens its own session the usual way.
    again = open_session(platform.stub, grain.grain_id)
    assert again.session_id != session.session_id
    with relay_connect(again.stream) as sock:
        assert http(sock, request_bytes("GET", "/whoami", again)).status == 200


def test_the_sandbox_starts_the_app_and_the_bridge_adopts_it(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    probes = 0
    for bridge in bridges_of(platform.grainmgr_pid):
        try:
            children = Path(f"/proc/{bridge}/task/{bridge}/children").read_text().split()
            ours = any(
                b"/opt/app/server.py" in Path(f"/proc/{c}/cmdline").read_bytes() for c in children
            )
        except FileNotFoundError:
            continue  # an earlier test's grain stopping right now
        if not ours:
            continue  # another app's grain (the probe's command is absolute: /usr/bin/python3)
        probes += 1
        # The app is pid 2 of the grain: started by its init just before the init became
        # the bridge, and the bridge's only child.
        assert len(children) == 1
        status = Path(f"/proc/{children[0]}/status").read_text()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "2"
        # The bridge runs in the init, a fork of the fork server: not bridge.py's command line,
        # but named for ps and top.
        assert b"bridge.py" not in Path(f"/proc/{bridge}/cmdline").read_bytes()
        assert Path(f"/proc/{bridge}/comm").read_text().strip() == "gh-bridge"
    assert probes >= 1
    # The app can open its own /proc files, but none of the bridge's (pid 1 of the grain):
    # the init went non-dumpable, so the bridge's memory (a fork of the fork server's) is
    # out of the app's reach although both run as the grain's uid.
    with relay_connect(session.stream) as sock:
        own = http(sock, request_bytes("GET", "/peek?pid=2", session)).json()
        init = http(sock, request_bytes("GET", "/peek?pid=1", session)).json()
    assert own == {"environ": "ok", "mem": "ok", "maps": "ok"}
    assert init == {"environ": "EACCES", "mem": "EACCES", "maps": "EACCES"}
