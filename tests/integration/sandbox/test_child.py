"""A grain's second program (SpawnSpec.child_argv): started by the sandbox, fully confined.

grainmgr starts the app this way, next to the bridge, so the app's start does not wait for
the bridge interpreter's. The child must be exactly as confined as the first program: same
namespaces, seccomp filter, no_new_privs, no capabilities, fds 0-2 only, its own session, cwd
/var, only its own environment; and the first program must learn its pid and be its parent.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr.launcher import SpawnSpec
from grainhouse_grainmgr.spec import CHILD_PID_ENV

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts launchers as root and as uid 65534"),
]

Site = Any  # conftest.Site

# The child reports on itself; the fields of /proc/<pid>/stat after the command name are
# state, ppid, pgrp, session.
CHILD = [
    "/bin/sh",
    "-c",
    # First, with builtins only (a pipeline would briefly hold pipe fds of its own): which
    # fds beyond 0-2 are open, among the granted ones (3, 4) and the sandbox's own (900+).
    "for fd in 3 4 5 900 901 902 903 904; do [ -e /proc/$$/fd/$fd ] && echo child open=$fd; "
    "done; "
    'read -r stat < /proc/$$/stat; set -- ${stat##*) }; echo "child ppid=$2 pgrp=$3 sid=$4"; '
    'echo "child pid=$$ cwd=$(pwd)"; '
    "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd|Uid):' /proc/$$/status | "
    "sed 's/^/child /; s/\\t/ /g'; env | sed 's/^/child env /'",
]
# The first program waits for (reaps) the child it was told about, as the bridge does.
FIRST = [
    "/usr/bin/python3",
    "-I",
    "-S",
    "-c",
    "import os\n"
    f"pid = int(os.environ['{CHILD_PID_ENV}'])\n"
    "_, status = os.waitpid(pid, 0)\n"
    "print(f'first reaped={pid} status={os.waitstatus_to_exitcode(status)}')\n"
    "import stat\n"
    "print(f'first fd3_is_the_grant={stat.S_ISFIFO(os.fstat(3).st_mode)}')\n",
]


def spec(site: Site, name: str, child: list[str], **kwargs: Any) -> tuple[SpawnSpec, Path]:
    pkg, var, log = site.grain_dirs(name)
    return (
        SpawnSpec(
            grain_id=f"{name}-{uuid.uuid4().hex[:8]}",
            argv=FIRST,
            env={"FIRST_ONLY": "1"},
            package_dir=str(pkg),
            var_dir=str(var),
            log_path=str(log),
            child_argv=child,
            child_env={"CHILD_ONLY": "yes", "PATH": "/usr/bin:/bin"},
            **kwargs,
        ),
        log,
    )


async def run(site: Site, grain: SpawnSpec) -> int | None:
    await site.launcher.spawn(grain)
    status = await asyncio.wait_for(site.launcher.wait(grain.grain_id), 60)
    return status.code


async def test_the_child_is_confined_like_the_first_program(site: Site) -> None:
    channel_r, channel_w = os.pipe()  # a granted fd (3 in the first program), not the child's
    try:
        grain, log = spec(site, "child", CHILD, pass_fds=(channel_w,))
        assert await run(site, grain) == 0
    finally:
        os.close(channel_r)
        os.close(channel_w)
    lines = log.read_text().splitlines()
    facts = dict(
        line[len("child ") :].split(": " if ": " in line else "=", 1)
        for line in lines
        if line.startswith("child ") and not line.startswith("child env ")
    )
    child_env = sorted(line[len("child env ") :] for line in lines if line.startswith("child env "))
    # Its own session in the grain's pid namespace, the init (now the first program) its parent.
    assert "child ppid=1 pgrp=2 sid=2" in lines
    assert "child pid=2 cwd=/var" in lines
    assert "open" not in facts  # fd 3 (granted to the first program) is not inherited
    assert facts["Seccomp"].split() == ["2"]  # the grain's filter
    assert facts["NoNewPrivs"].split() == ["1"]
    assert facts["CapEff"].split() == ["0000000000000000"]
    assert facts["CapBnd"].split() == ["0000000000000000"]
    assert facts["Uid"].split() == ["1000"] * 4
    # Exactly its own environment (sh adds PWD): nothing of the first program's, no GRAINHOUSE_*.
    assert [e for e in child_env if not e.startswith("PWD=")] == [
        "CHILD_ONLY=yes",
        "PATH=/usr/bin:/bin",
    ]
    # The first program was told the child's pid, reaped it, and kept its granted fd.
    assert "first reaped=2 status=0" in lines
    assert "first fd3_is_the_grant=True" in lines


async def test_a_child_that_cannot_start_leaves_the_first_program_running(site: Site) -> None:
    grain, log = spec(site, "nochild", ["/opt/app/no-such-program"])
    grain = SpawnSpec(
        **{
            **grain.__dict__,
            "argv": ["/bin/sh", "-c", f'echo "first child=${{{CHILD_PID_ENV}:-none}}"'],
        }
    )
    assert await run(site, grain) == 0
    lines = log.read_text().splitlines()
    assert "[sandbox] cannot start /opt/app/no-such-program: No such file or directory" in lines
    assert "first child=none" in lines


async def test_without_a_child_the_first_program_is_told_nothing(site: Site) -> None:
    pkg, var, log = site.grain_dirs("nochildpid")
    grain = SpawnSpec(
        grain_id=f"nochildpid-{uuid.uuid4().hex[:8]}",
        argv=["/bin/sh", "-c", f'echo "first child=${{{CHILD_PID_ENV}:-none}}"; ls /proc | wc -l'],
        env={},
        package_dir=str(pkg),
        var_dir=str(var),
        log_path=str(log),
    )
    assert await run(site, grain) == 0
    assert log.read_text().splitlines()[0] == "first child=none"
