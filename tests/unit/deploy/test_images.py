"""deploy/Dockerfile and the confinement profiles (seccomp, AppArmor), checked without Docker.

The Dockerfile has a target per service with everything it copies present, compose builds only
those targets, the scripts the images install run, and grainmgr's profiles allow exactly the
calls and rules its sandbox needs.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.conftest import DEPLOY, ROOT, SERVICES, load_module

pytestmark = pytest.mark.unit


# ---- the Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (the part before the first FROM is stage '')."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in dockerfile_instructions(DEPLOY / "Dockerfile"):
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, rest
            current = match[2] or f"unnamed-{len(result)}"
            assert current not in result, f"stage {current} defined twice"
            result[current] = [(word, match[1])]
        else:
            result[current].append((word, rest))
    return result


def test_base_image_is_a_build_argument(stages: dict[str, list[tuple[str, str]]]) -> None:
    assert any(w == "ARG" and a.startswith("BASE_IMAGE=") for w, a in stages[""])
    bases = [insts[0][1] for name, insts in stages.items() if name]
    for base in bases:
        assert base == "${BASE_IMAGE}" or base in stages, f"FROM {base}: not the build argument"


def test_every_copy_source_exists(stages: dict[str, list[tuple[str, str]]]) -> None:
    copies = 0
    for name, insts in stages.items():
        for word, rest in insts:
            if word not in ("COPY", "ADD"):
                continue
            assert word == "COPY", "use COPY, not ADD"
            args = rest.split()
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            sources = paths[:-1]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), "")
            if source_stage:
                assert source_stage in stages, f"{name}: COPY --from={source_stage} unknown"
                assert list(stages).index(source_stage) < list(stages).index(name)
                continue
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file"
                copies += 1
    assert copies >= 5


def test_build_stage_copies_what_the_build_needs(
    stages: dict[str, list[tuple[str, str]]],
) -> None:
    copied = {
        rest.split()[0]
        for word, rest in stages["build"]
        if word == "COPY" and not rest.startswith("--")
    }
    for needed in ("constraints.txt", "proto/", "libs/", "services/", "tools/gen_proto.py"):
        assert needed in copied


@pytest.mark.parametrize("svc", SERVICES)
def test_each_service_target_is_complete(
    svc: str, stages: dict[str, list[tuple[str, str]]], services: dict[str, dict[str, Any]]
) -> None:
    insts = stages[svc]
    words = dict(insts)  # the last of each instruction wins, as in Docker
    assert words["USER"] == "10001:10001"
    cmd = json.loads(words["CMD"])
    assert cmd == ["python", "-m", f"grainhouse_{svc}"]
    assert importlib.util.find_spec(f"grainhouse_{svc}.__main__") is not None
    exposed = {int(p) for p in words["EXPOSE"].split()}
    env = services[svc]["environment"]
    listeners = {
        int(value.rsplit(":", 1)[1]) for key, value in env.items() if key.endswith("_LISTEN")
    }
    assert {f"GRAINHOUSE_{svc.upper()}_LISTEN", f"GRAINHOUSE_{svc.upper()}_METRICS_LISTEN"} <= set(
        env
    )
    assert exposed == listeners
    health = words["HEALTHCHECK"]
    probe = json.loads(health[health.index("CMD") + 3 :].strip())
    assert probe == services[svc]["healthcheck"]["test"][1:], "image and compose disagree"
    # The venv copied in holds this service and never another one.
    assert ("COPY", f"--from=build /opt/venv-{svc} /opt/grainhouse") in insts


def test_compose_builds_only_existing_targets(
    services: dict[str, dict[str, Any]], stages: dict[str, list[tuple[str, str]]]
) -> None:
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert set(built) == {*SERVICES, "db-init"}
    for name, build in built.items():
        assert build["target"] == name and name in stages
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        ).resolve()
        assert "BASE_IMAGE" in build["args"]


def test_image_scripts_are_the_shipped_ones() -> None:
    # The healthcheck and db-init scripts the images install must at least run.
    for script in ("healthcheck.py", "db_init.py", "gen_secrets.py"):
        proc = subprocess.run(
            [sys.executable, str(DEPLOY / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


# ---- seccomp and AppArmor profiles ---------------------------------------------------------


def test_seccomp_profile_is_generated_and_every_name_is_a_real_call() -> None:
    gen = load_module(DEPLOY / "seccomp" / "gen_profile.py")
    text = (DEPLOY / "seccomp" / "grainmgr.json").read_text(encoding="utf-8")
    assert text == gen.render(), "grainmgr.json is stale: run deploy/seccomp/gen_profile.py"
    profile = json.loads(text)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "SCMP_ARCH_X86" not in profile["architectures"]  # 32-bit calls are refused
    allowed = {n for group in profile["syscalls"] for n in group["names"]}
    import pyseccomp

    unknown = []
    for name in allowed:
        numbers = [
            pyseccomp.resolve_syscall(arch, name)
            for arch in (pyseccomp.Arch.X86_64, pyseccomp.Arch.AARCH64)
        ]
        if max(numbers) < 0:
            unknown.append(name)
    assert unknown == []
    assert not allowed & gen.REFUSED
    for needed in ("unshare", "mount", "pivot_root", "seccomp", "setns", "clone", "prctl"):
        assert needed in allowed
    for never in ("bpf", "ptrace", "open_by_handle_at", "kexec_load", "init_module", "keyctl"):
        assert never not in allowed


def test_apparmor_profile_grants_namespaces_and_mounts() -> None:
    path = DEPLOY / "apparmor" / "grainhouse-grainmgr"
    text = path.read_text(encoding="utf-8")
    rules = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    for needed in ("userns,", "mount,", "umount,", "pivot_root,", "deny ptrace,"):
        assert needed in rules
    assert "capability," not in rules, "grant named capabilities only"
    assert text.count("{") == text.count("}")


def test_apparmor_profile_compiles() -> None:
    parser = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
    if not Path(parser).exists():
        pytest.fail("apparmor_parser missing: apt-get install apparmor (see tools/system-deps.sh)")
    text = (DEPLOY / "apparmor" / "grainhouse-grainmgr").read_text(encoding="utf-8")
    version = subprocess.run(
        [parser, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    major = int(re.search(r"version (\d+)", version)[1])  # type: ignore[index]
    if major < 4:
        # `userns,` is AppArmor 4 syntax; the docs tell AppArmor 3 hosts to drop the line.
        text = "\n".join(line for line in text.splitlines() if not line.startswith("  userns,"))
    proc = subprocess.run(
        [parser, "--skip-kernel-load", "--skip-cache", "-o", "/dev/null"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
