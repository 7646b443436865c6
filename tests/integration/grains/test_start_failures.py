"""Grain starts that fail are counted, and OpenSession hands out the advertised relay address.

Runs its own platform (`grainhouse up`) with a short start timeout and
GRAINHOUSE_GRAINMGR_RELAY_ADVERTISE set, so the shared grains platform keeps its defaults.
The counters are read from grainmgr's real /metrics listener.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import grainmgr_pb2 as pb
from grainhouse_proto import grainmgr_pb2_grpc
from tests.integration.grains.conftest import (
    HERE,
    Platform,
    Stack,
    create,
    http,
    install,
    make_data_root,
    open_session,
    relay_connect,
    request_bytes,
    wait_serving,
)

pytestmark = pytest.mark.integration

START_TIMEOUT = 3
# A host name, no port: grainmgr adds its relay's real port (relay_listen is 127.0.0.1:0).
ADVERTISE = "localhost"
SILENT: list[Any] = []  # the installed app that never listens (set by the fixture)


def _manifest(title: str, command: list[str]) -> dict[str, Any]:
    probe = json.loads((HERE / "testapp" / "grainhouse.json").read_text(encoding="utf-8"))
    probe.update(title=title, continue_command=command)
    probe["actions"] = [{"noun": "thing", "command": command}]
    return probe


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform whose `probe` is the test app and whose `static` is the `noexec` app."""
    root = make_data_root()
    stack = Stack(
        root,
        {
            "GRAINHOUSE_GRAINMGR_START_TIMEOUT_SECONDS": str(START_TIMEOUT),
            "GRAINHOUSE_GRAINMGR_RELAY_ADVERTISE": ADVERTISE,
        },
    )
    channel = None
    try:
        stack.start()
        grainmgr = stack.status()["services"]["grainmgr"]
        channel = grpc.insecure_channel(grainmgr["grpc"])
        stub = grainmgr_pb2_grpc.GrainManagerStub(channel)
        wait_serving(stub)
        out = tmp_path_factory.mktemp("failing-packages")
        apps = {
            # The command does not exist: the bridge cannot spawn it and ends.
            "noexec": ["/opt/app/no-such-program"],
            # Runs, but never listens on the manifest's port.
            "silent": ["/usr/bin/python3", "-c", "import time; time.sleep(120)"],
        }
        for name, command in apps.items():
            src = out / name
            src.mkdir()
            (src / "grainhouse.json").write_text(json.dumps(_manifest(name, command)))
            (src / "README").write_text("a test app that never serves\n")
            pack_directory(src, out / f"{name}.pkg", generate_key(), level=0)
        noexec = install(stub, out / "noexec.pkg")
        SILENT.append(install(stub, out / "silent.pkg"))
        pack_directory(HERE / "testapp", out / "probe.pkg", generate_key(), level=0)
        probe = install(stub, out / "probe.pkg")
        yield Platform(
            stack, stub, grainmgr["pid"], grainmgr.get("metrics", ""), probe, noexec, out
        )
    finally:
        if channel is not None:
            channel.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def _samples(platform: Platform) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert platform.metrics_url, "the stack reports no metrics address for grainmgr"
    with urllib.request.urlopen(platform.metrics_url, timeout=10) as r:
        text = r.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _failures(platform: Platform, reason: str) -> float:
    key = ("grainhouse_grainmgr_sandbox_spawn_failures_total", (("reason", reason),))
    return _samples(platform).get(key, 0.0)


def _starting(platform: Platform) -> float:
    return _samples(platform)[("grainhouse_grainmgr_grains_starting", ())]


def test_an_app_that_cannot_start_counts_a_spawn_failure(failing: Platform) -> None:
    before_exited = _failures(failing, "app_exited")
    before_silent = _failures(failing, "never_listened")
    grain = create(failing, failing.static)
    with pytest.raises(grpc.RpcError) as info:
        open_session(failing.stub, grain.grain_id)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The bridge reports the missing program by ending, or (on a slow host) the start times
    # out first; either way exactly one failure is counted, under a bounded reason.
    after = _failures(failing, "app_exited") + _failures(failing, "never_listened")
    assert after == before_exited + before_silent + 1
    assert _starting(failing) == 0  # the gauge came down although the start failed


def test_an_app_that_never_listens_counts_never_listened(failing: Platform) -> None:
    before = _failures(failing, "never_listened")
    grain = create(failing, SILENT[0])
    with pytest.raises(grpc.RpcError) as info:
        open_session(failing.stub, grain.grain_id)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "start timeout" in (info.value.details() or "")
    assert _failures(failing, "never_listened") == before + 1
    assert _starting(failing) == 0


def test_open_session_hands_out_the_advertised_relay_address(failing: Platform) -> None:
    grain = create(failing, failing.probe)
    session = open_session(failing.stub, grain.grain_id)
    host, port = session.stream.relay_address.rsplit(":", 1)
    assert host == ADVERTISE
    assert port.isdigit() and int(port) > 0  # the relay's real port, not relay_listen's 0
    # ... and it is an address that works.
    with relay_connect(session.stream) as sock:
        assert http(sock, request_bytes("GET", "/whoami", session)).status == 200
    ticket = failing.stub.OpenStream(
        pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id)
    )
    assert ticket.relay_address == session.stream.relay_address
    # A successful start also leaves nothing "starting".
    assert _starting(failing) == 0
