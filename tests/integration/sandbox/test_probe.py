"""Proof from inside: a probe runs in a real grain sandbox; we assert its findings from outside.

The same probe also runs on the host (as root) as a control: every check that the sandbox
passes must fail there, except the few that hold everywhere (listed below with a reason), so
each detector is shown to detect what it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr import probe, syscall_probe
from grainhouse_grainmgr.launcher import Limits, SpawnSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts launchers as root and as uid 65534"),
]

MEM_LIMIT = 96 << 20
PIDS_LIMIT = 24
TMP_LIMIT = 8 << 20
CHECK_NAMES = sorted(
    ["inherited_fds_declared_only", *probe.CHECKS, *(f"syscall_{n}" for n in syscall_probe.PROBES)]
)
# Checks that also hold on a host, by nature: they prove the sandbox did not break things.
HOLD_EVERYWHERE = {
    "threads_work",
    "fork_exec_work",
    "var_writable",  # the host's /var is writable by root too
    *(f"syscall_{n}" for n, want in syscall_probe.EXPECTED_UNDER_FILTER.items() if want == 0),
}
# A control run as root cannot tell these apart (the kernel answers the same without a filter).
# The host kernel itself answers these like the filter does, so the control cannot fail them.
CONTROL_AMBIGUOUS = {
    "syscall_x32_getpid",  # Debian kernels are built without x32: ENOSYS with or without filter
}

PROBE_PATH = Path(probe.__file__)
Site = Any  # conftest.Site (conftest modules cannot be imported by name)
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
IPC_CREAT, IPC_RMID = 0o1000, 0


@pytest.fixture(scope="session")
def host_fixtures() -> Iterator[dict[str, str]]:
    """Things on the host a grain must not reach: a TCP listener, an abstract socket, SysV shm."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    abstract_name = f"grainhouse-probe-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    key = int.from_bytes(os.urandom(3), "big") + 1
    shmid = _libc.shmget(key, 4096, IPC_CREAT | 0o666)
    assert shmid >= 0, "cannot create the host SysV segment for the probe"
    marker = f"/tmp/grainhouse-host-marker-{uuid.uuid4().hex}"
    with open(marker, "w") as f:
        f.write("host secret")
    try:
        yield {
            "PROBE_HOST_TCP_PORT": str(tcp.getsockname()[1]),
            "PROBE_ABSTRACT": abstract_name,
            "PROBE_SHM_KEY": str(key),
            "PROBE_HOST_MARKERS": f"{marker}:/work:/root:/etc/shadow",
        }
    finally:
        tcp.close()
        abstract.close()
        _libc.shmctl(shmid, IPC_RMID, None)
        os.unlink(marker)


def probe_env(host: dict[str, str], other_pid: int) -> dict[str, str]:
    return {
        **host,
        "PROBE_OUT_FD": "3",
        "PROBE_DECLARED_FDS": "3",
        "PROBE_HOST_PID": str(os.getpid()),
        "PROBE_OTHER_PID": str(other_pid),
        "PROBE_TMP_LIMIT": str(TMP_LIMIT),
        "PROBE_MEM_LIMIT": str(MEM_LIMIT),
        "PROBE_PIDS_LIMIT": str(PIDS_LIMIT),
    }


async def run_probe(site: Site, host: dict[str, str]) -> tuple[dict[str, Any], Any]:
    # A second grain, alive while the probe runs: its process and files must stay invisible.
    other_pkg, other_var, other_log = site.grain_dirs("other")
    (other_var / "other-grain-secret").write_text("x")
    other = await site.launcher.spawn(
        SpawnSpec(
            grain_id=f"other-{uuid.uuid4().hex[:8]}",
            argv=["/bin/sleep", "60"],
            env={},
            package_dir=str(other_pkg),
            var_dir=str(other_var),
            log_path=str(other_log),
        )
    )
    pkg, var, log = site.grain_dirs("probe", probe_files=True)
    env = probe_env(host, other.pid)
    env["PROBE_HOST_MARKERS"] += f":{other_var}:{other_var}/other-grain-secret"
    read_end, write_end = os.pipe()
    try:
        grain = await site.launcher.spawn(
            SpawnSpec(
                grain_id=f"probe-{uuid.uuid4().hex[:8]}",
                argv=["/usr/bin/python3", "/opt/app/probe.py"],
                env=env,
                package_dir=str(pkg),
                var_dir=str(var),
                log_path=str(log),
                pass_fds=(write_end,),
                limits=Limits(memory_bytes=MEM_LIMIT, pids=PIDS_LIMIT, tmp_bytes=TMP_LIMIT),
            )
        )
    finally:
        os.close(write_end)
    loop = asyncio.get_running_loop()
    output = await loop.run_in_executor(None, _read_all, read_end)
    status = await asyncio.wait_for(site.launcher.wait(grain.grain_id), 60)
    await site.launcher.kill(other.grain_id)
    assert output, f"the probe wrote nothing; log: {log.read_text() if log.exists() else ''}"
    return json.loads(output), status


def _read_all(fd: int) -> bytes:
    chunks = []
    with contextlib.closing(os.fdopen(fd, "rb")) as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


_results: dict[str, tuple[dict[str, Any], Any]] = {}


@pytest.fixture(scope="session")
async def probe_results(site: Site, host_fixtures: dict[str, str]) -> dict[str, Any]:
    if site.mode not in _results:
        _results[site.mode] = await run_probe(site, host_fixtures)
    return _results[site.mode][0]


@pytest.fixture(scope="session")
def control_results(host_fixtures: dict[str, str]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    leaked = os.open("/dev/null", os.O_RDONLY)  # an inherited fd the sandbox would have closed
    env = probe_env(host_fixtures, os.getppid())
    env["PROBE_OUT_FD"] = str(write_end)
    env["PROBE_DECLARED_FDS"] = str(write_end)
    subprocess.run(
        ["/usr/bin/python3", str(PROBE_PATH)],
        env=env,
        pass_fds=(write_end, leaked),
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    os.close(write_end)
    os.close(leaked)
    return json.loads(_read_all(read_end))


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_sandbox_property_holds_inside(check: str, probe_results: dict[str, Any]) -> None:
    assert check in probe_results, f"the probe did not run {check}"
    outcome = probe_results[check]
    assert outcome["ok"], f"{check}: {outcome['detail']}"


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_detector_fails_on_the_host(check: str, control_results: dict[str, Any]) -> None:
    outcome = control_results[check]
    if check in HOLD_EVERYWHERE:
        assert outcome["ok"], f"{check} should hold on the host too: {outcome['detail']}"
    elif check in CONTROL_AMBIGUOUS:
        assert "got ENOSYS" in outcome["detail"], outcome  # the kernel lacks the ABI itself
    else:
        assert not outcome["ok"], f"{check} passed on the host, so it detects nothing"


def test_most_checks_fail_on_the_host(control_results: dict[str, Any]) -> None:
    checked = [c for c in CHECK_NAMES if c not in HOLD_EVERYWHERE]
    failing = [c for c in checked if not control_results[c]["ok"]]
    assert len(failing) >= 0.9 * len(checked)


async def test_memory_over_limit_is_reported(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("oom")
    spec = SpawnSpec(
        grain_id=f"oom-{uuid.uuid4().hex[:8]}",
        argv=["/usr/bin/python3", "-c", "x = [b'1' * (8 << 20) for _ in range(64)]"],
        env={},
        package_dir=str(pkg),
        var_dir=str(var),
        log_path=str(log),
        limits=Limits(memory_bytes=64 << 20),
    )
    await root_site.launcher.spawn(spec)
    status = await asyncio.wait_for(root_site.launcher.wait(spec.grain_id), 60)
    assert status.signal == 9 and status.oom_killed and status.reason == "oom", status
