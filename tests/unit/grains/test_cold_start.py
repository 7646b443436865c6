"""Pieces of the cold start that need no sandbox: the app's environment as grainmgr and the
bridge build it, and the one log line per cold start the bench reads."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr import bridge, grains, running
from grainhouse_grainmgr.spec import CHILD_PID_ENV

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"env": {}, "port": 8000}, {"PORT": "8000", "HOME": "/var"}),
        (
            {"env": {"HOME": "/var/home", "PATH": "/opt/app/bin"}, "port": None},
            {"HOME": "/var/home", "PATH": "/opt/app/bin"},
        ),
        (
            {"env": {"GRAINHOUSE_BRIDGE": "x", "GRAINHOUSE_CHILD_PID": "9", "A": "1"}, "port": 1},
            {"A": "1", "PORT": "1", "HOME": "/var"},
        ),
        ({"env": {"PORT": "1"}, "port": 2}, {"PORT": "2", "HOME": "/var"}),
    ],
)
def test_the_app_environment_is_the_manifest_s_plus_port_and_defaults(
    config: dict[str, Any], expected: dict[str, str]
) -> None:
    # One function, whether the sandbox (grainmgr's spec) or the bridge starts the app.
    assert grains.app_env is bridge.app_env
    expected.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert bridge.app_env(config) == expected


def test_the_bridge_reads_the_child_pid_where_the_launcher_puts_it() -> None:
    source = Path(bridge.__file__).read_text()
    assert f'os.environ.get("{CHILD_PID_ENV}", "0")' in source


def test_the_start_steps_line_is_what_the_bench_reads(tmp_path: Path) -> None:
    steps = {"in": 100.0, "checked": 100.004, "spawned": 100.010, "listening": 100.200}
    steps.update({"ready": 100.2005, "session": 100.202})
    line = running.steps_line("g1", steps)
    assert line == (
        "start steps g1 at=100.0000 checked=4.0 spawned=10.0 listening=200.0 ready=200.5 "
        "session=202.0"
    )
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.import_module("bench_grains")
    finally:
        sys.path.remove(str(BENCH))

    class Stack:
        data_dir = tmp_path

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "grainmgr.log").write_text(
        json.dumps({"msg": "start steps g0 at=1.0 checked=1.0"})
        + "\n"
        + json.dumps({"msg": line})
        + "\n"
    )
    marks = bench.start_steps(Stack(), "g1")
    # Sent 3 ms before grainmgr's stamp "in"; first byte 5 ms after the session.
    got = bench.cold_steps(99.997, 100.207, marks)
    assert {k: round(v, 3) for k, v in got.items()} == {
        "frontend_to_grainmgr": 3.0,
        "checks": 4.0,
        "sandbox": 6.0,
        "app_start": 190.0,
        "record": 0.5,
        "session": 1.5,
        "to_first_byte": 5.0,
    }
