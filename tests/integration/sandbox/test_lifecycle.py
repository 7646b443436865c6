"""Grain lifecycle through a real fork server: exit status, env, stdio, logs, kill, quota, death."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, Limits, SandboxError, SpawnSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts launchers as root and as uid 65534"),
]

Site = Any  # conftest.Site


def spec_for(site: Site, name: str, argv: list[str], **kwargs: Any) -> tuple[SpawnSpec, Path]:
    pkg, var, log = site.grain_dirs(name)
    spec = SpawnSpec(
        grain_id=f"{name}-{uuid.uuid4().hex[:8]}",
        argv=argv,
        env=kwargs.pop("env", {}),
        package_dir=str(pkg),
        var_dir=str(var),
        log_path=str(log),
        **kwargs,
    )
    return spec, log


async def run_to_end(site: Site, spec: SpawnSpec, timeout: float = 60) -> Any:
    await site.launcher.spawn(spec)
    return await asyncio.wait_for(site.launcher.wait(spec.grain_id), timeout)


async def test_exit_code_and_output_reach_the_log(site: Site) -> None:
    spec, log = spec_for(site, "exit", ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    status = await run_to_end(site, spec)
    assert (status.code, status.signal, status.reason) == (3, None, "exited")
    assert log.read_text().splitlines() == ["out", "err"]


async def test_environment_is_only_what_the_manifest_sets(site: Site) -> None:
    spec, log = spec_for(site, "env", ["/usr/bin/env"], env={"FOO": "bar", "LANG": "C.UTF-8"})
    assert (await run_to_end(site, spec)).code == 0
    assert sorted(log.read_text().splitlines()) == ["FOO=bar", "LANG=C.UTF-8"]


async def test_stdin_is_dev_null_and_hostname_is_sandbox(site: Site) -> None:
    spec, log = spec_for(
        site,
        "stdio",
        ["/bin/sh", "-c", "readlink /proc/self/fd/0; cat; cat /proc/sys/kernel/hostname"],
    )
    assert (await run_to_end(site, spec)).code == 0
    assert log.read_text().splitlines() == ["/dev/null", "sandbox"]


async def test_log_is_size_capped_and_rotated(site: Site) -> None:
    script = "import sys\nfor i in range(4000): sys.stdout.write(f'{i:09d}\\n')\n"
    spec, log = spec_for(
        site,
        "logs",
        ["/usr/bin/python3", "-c", script],
        limits=Limits(log_bytes=8192, log_keep=2),
    )
    assert (await run_to_end(site, spec)).code == 0
    files = sorted(p.name for p in log.parent.iterdir() if p.name.startswith("log"))
    assert files == ["log", "log.1", "log.2"]
    for name in files:
        assert (log.parent / name).stat().st_size <= 8192
    assert log.read_text().splitlines()[-1] == f"{3999:09d}"  # the newest lines are kept


async def test_missing_program_is_a_precise_error(site: Site) -> None:
    spec, _ = spec_for(site, "noexec", ["/opt/app/missing"])
    with pytest.raises(SandboxError) as info:
        await site.launcher.spawn(spec)
    assert info.value.kind == "internal"
    assert "exec /opt/app/missing in the sandbox: No such file or directory" in info.value.message


async def test_same_grain_cannot_run_twice(root_site: Site) -> None:
    spec, _ = spec_for(root_site, "twice", ["/bin/sleep", "30"])
    await root_site.launcher.spawn(spec)
    try:
        with pytest.raises(SandboxError, match="already running"):
            await root_site.launcher.spawn(spec)
    finally:
        await root_site.launcher.kill(spec.grain_id)


def _pids_in_namespace(init_pid: int) -> list[int]:
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid_for_children")
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    found.append(int(entry))
            except OSError:
                continue
    return found


async def test_kill_takes_the_whole_tree(site: Site) -> None:
    spec, _ = spec_for(
        site, "tree", ["/bin/sh", "-c", "sleep 300 & sleep 300 & (sleep 300 &) ; sleep 300"]
    )
    grain = await site.launcher.spawn(spec)
    deadline = time.monotonic() + 10
    while len(tree := _pids_in_namespace(grain.pid)) < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(tree) >= 5, tree  # sh + four sleeps, one of them re-parented to init
    status = await asyncio.wait_for(site.launcher.kill(spec.grain_id), 30)
    assert status is not None and status.reason == "killed"
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in tree) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not [p for p in tree if os.path.exists(f"/proc/{p}")]


async def test_var_quota_makes_var_read_only(site: Site) -> None:
    script = textwrap.dedent(
        """
        import errno, time
        for i in range(3):
            with open(f"/var/f{i}", "wb") as f:
                f.write(b"x" * (1 << 20))
        for _ in range(600):
            try:
                with open("/var/more", "ab") as f:
                    f.write(b"y")
            except OSError as exc:
                print("refused", errno.errorcode[exc.errno], flush=True)
                break
            time.sleep(0.05)
        """
    )
    spec, log = spec_for(
        site,
        "quota",
        ["/usr/bin/python3", "-c", script],
        limits=Limits(var_quota_bytes=2 << 20),
    )
    status = await run_to_end(site, spec)
    assert status.code == 0, log.read_text()
    assert log.read_text().strip() == "refused EROFS"
    events = site.launcher.quota_events(spec.grain_id)
    assert events and events[0].exceeded and events[0].used_bytes > 2 << 20


async def test_grain_starting_over_quota_has_read_only_var_at_once(site: Site) -> None:
    script = textwrap.dedent(
        """
        import errno
        try:
            with open("/var/more", "ab") as f:
                f.write(b"y")
            print("written", flush=True)
        except OSError as exc:
            print("refused", errno.errorcode[exc.errno], flush=True)
        """
    )
    spec, log = spec_for(
        site,
        "overquota",
        ["/usr/bin/python3", "-c", script],
        limits=Limits(var_quota_bytes=1 << 20),
    )
    with open(Path(spec.var_dir) / "big", "wb") as f:  # left over from an earlier run
        f.write(b"x" * (2 << 20))
    status = await run_to_end(site, spec)
    assert status.code == 0, log.read_text()
    assert log.read_text().strip() == "refused EROFS"


async def test_usage_is_measured(root_site: Site) -> None:
    spec, _ = spec_for(
        root_site, "usage", ["/bin/sh", "-c", "head -c 300000 /dev/zero > /var/a; sleep 30"]
    )
    await root_site.launcher.spawn(spec)
    try:
        for _ in range(200):
            usage = await root_site.launcher.usage(spec.grain_id)
            if usage.used_bytes >= 300000:
                break
            await asyncio.sleep(0.05)
        assert 300000 <= usage.used_bytes < 2 << 20 and not usage.exceeded
    finally:
        await root_site.launcher.kill(spec.grain_id)


GRAINMGR_STANDIN = """
import asyncio, json, sys, time
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, SpawnSpec
root, cgroup = sys.argv[1], sys.argv[2]
launcher = Launcher.start(LauncherSettings(allowed_roots=(root,), cgroup_name=cgroup))
async def main():
    g = await launcher.spawn(SpawnSpec("orphan", ["/bin/sleep", "300"], {}, root + "/pkg",
                                       root + "/var", root + "/log"))
    print(json.dumps({"server": launcher.pid, "grain": g.pid}), flush=True)
    await asyncio.sleep(300)
asyncio.run(main())
"""


async def test_grains_die_with_grainmgr_and_restart_finds_no_stale_state(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "var").mkdir()
    cgroup = f"grainhouse-test-{uuid.uuid4().hex[:8]}"
    standin = subprocess.Popen(
        [sys.executable, "-c", GRAINMGR_STANDIN, str(tmp_path), cgroup],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert standin.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(standin.stdout.readline), 60)
    pids = json.loads(line)
    assert os.path.exists(f"/proc/{pids['grain']}")
    standin.send_signal(signal.SIGKILL)  # no clean-up code of grainmgr runs
    standin.wait()
    standin.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in pids.values()
    ):
        await asyncio.sleep(0.05)
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}") or "Z" in _state(pid), f"{pid} survived"
    # A restarted grainmgr cleans what the dead one could not (its cgroups), before any grain.
    launcher = Launcher.start(LauncherSettings(allowed_roots=(str(tmp_path),), cgroup_name=cgroup))
    try:
        assert launcher.info["stale_cgroups_removed"] == (1 if launcher.cgroup_version else 0)
        if launcher.cgroup_version == 1:
            assert not list(Path("/sys/fs/cgroup/pids").rglob(f"{cgroup}/orphan"))
    finally:
        launcher.close()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


REFUSED_USERNS = """
import errno, sys
import pyseccomp
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, SandboxError
f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
f.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare")
f.load()
try:
    Launcher.start(LauncherSettings(allowed_roots=(sys.argv[1],), cgroup_name=sys.argv[2]))
except SandboxError as exc:
    print(exc.kind)
    print(exc.message)
"""


def test_refuses_to_start_without_user_namespaces(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", REFUSED_USERNS, str(tmp_path), f"gh-test-{uuid.uuid4().hex[:8]}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    kind, message = out.split("\n", 1)
    assert kind == "unavailable"
    assert "create user, mount, pid, net, ipc, uts and cgroup namespaces" in message
    assert "Operation not permitted" in message
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in message


async def test_direct_path_without_spares(tmp_path: Path) -> None:
    # The session launchers mostly hand out pre-built spares; this one never has any, so the
    # fork-on-request path (used when no spare is ready) is proven on its own.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "var").mkdir()
    launcher = Launcher.start(
        LauncherSettings(
            allowed_roots=(str(tmp_path),),
            cgroup_name=f"grainhouse-test-{uuid.uuid4().hex[:8]}",
            spares=0,
        )
    )
    try:
        spec = SpawnSpec(
            grain_id="direct",
            argv=[
                "/bin/sh",
                "-c",
                "id -u; cat /proc/sys/kernel/hostname; echo x > /var/f;"
                "for d in /root /home /work /boot /run; do test -e $d && echo leak$d; done; true",
            ],
            env={},
            package_dir=str(tmp_path / "pkg"),
            var_dir=str(tmp_path / "var"),
            log_path=str(tmp_path / "log"),
        )
        await launcher.spawn(spec)
        status = await asyncio.wait_for(launcher.wait("direct"), 60)
        lines = (tmp_path / "log").read_text().split()
        assert status.code == 0, lines
        assert lines == ["1000", "sandbox"]  # and no "leak/..." line
        assert (tmp_path / "var" / "f").read_text() == "x\n"
    finally:
        launcher.close()
