"""Hostile spawn requests are refused by the fork server before anything is forked or mounted."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr.launcher import SandboxError, SpawnSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts launchers as root and as uid 65534"),
]

Site = Any  # conftest.Site


def make_spec(pkg: Path, var: Path, log: Path, **changes: str) -> SpawnSpec:
    fields: dict[str, Any] = {
        "grain_id": f"hostile-{uuid.uuid4().hex[:8]}",
        "argv": ["/bin/true"],
        "env": {},
        "package_dir": str(pkg),
        "var_dir": str(var),
        "log_path": str(log),
    }
    fields.update(changes)
    return SpawnSpec(**fields)


async def refused(site: Site, spec: SpawnSpec) -> str:
    with pytest.raises(SandboxError) as info:
        await site.launcher.spawn(spec)
    assert info.value.kind == "invalid"
    # Refused before fork: no grain process, no cgroup, and the id is free for a good request.
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"**/{spec.grain_id}"))
    return info.value.message


async def test_package_outside_the_grain_root(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("outside")
    message = await refused(root_site, make_spec(pkg, var, log, package_dir="/etc"))
    assert message.startswith("package_dir '/etc' is outside the grain roots")


async def test_path_with_dot_dot(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("dotdot")
    sneaky = f"{var}/../../../etc"
    message = await refused(root_site, make_spec(pkg, var, log, var_dir=sneaky))
    assert message == f"var_dir {sneaky!r} is not a normalized absolute path"


async def test_storage_that_is_a_symlink(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("linkvar")
    link = var.parent / "var-link"
    link.symlink_to("/etc")
    message = await refused(root_site, make_spec(pkg, var, log, var_dir=str(link)))
    assert message == f"var_dir {str(link)!r} goes through a symlink (it resolves to '/etc')"


async def test_symlink_in_storage_pointing_out(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("linkout")
    (var / "sub").mkdir()
    (var / "sub" / "shadow").symlink_to("/etc/shadow")
    message = await refused(root_site, make_spec(pkg, var, log))
    assert message == (
        f"var_dir: symlink '{var}/sub/shadow' points to the absolute path '/etc/shadow'"
    )


async def test_relative_symlink_climbing_out_of_the_package(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("climb")
    (pkg / "up").symlink_to("../../..")
    message = await refused(root_site, make_spec(pkg, var, log))
    assert message == f"package_dir: symlink '{pkg}/up' points out of its tree ('../../..')"


async def test_package_with_a_device_file(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("device")
    os.mknod(pkg / "mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    message = await refused(root_site, make_spec(pkg, var, log))
    assert message == f"package_dir: '{pkg}/mem' is a device file"


async def test_package_with_a_setuid_binary(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("setuid")
    (pkg / "bin").mkdir()
    tool = pkg / "bin" / "tool"
    tool.write_bytes(Path("/bin/true").read_bytes())
    tool.chmod(0o4755)
    message = await refused(root_site, make_spec(pkg, var, log))
    assert message == f"package_dir: '{tool}' has a set-id bit"


async def test_log_path_that_is_a_symlink(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("loglink")
    log.symlink_to("/etc/passwd")
    message = await refused(root_site, make_spec(pkg, var, log))
    assert "log_path" in message and "symlink" in message


async def test_a_good_request_still_works_after_refusals(root_site: Site) -> None:
    pkg, var, log = root_site.grain_dirs("good")
    spec = make_spec(pkg, var, log)
    await root_site.launcher.spawn(spec)
    assert (await root_site.launcher.wait(spec.grain_id)).code == 0
