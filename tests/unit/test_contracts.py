"""The trust boundaries as import contracts, and generated code in step with proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_generated_grpc_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/gen_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    # Copy the generator and schemas, change a schema: --check must fail.
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "gen_proto.py").write_text((ROOT / "tools" / "gen_proto.py").read_text())
    (tmp_path / "proto").mkdir()
    for p in (ROOT / "proto").glob("*.proto"):
        (tmp_path / "proto" / p.name).write_text(p.read_text())
    out = tmp_path / "libs" / "proto" / "grainhouse_proto"
    out.mkdir(parents=True)
    stamp = (ROOT / "libs" / "proto" / "grainhouse_proto" / ".stamp").read_text()
    (out / ".stamp").write_text(stamp)
    check = [sys.executable, "tools/gen_proto.py", "--check"]
    assert subprocess.run(check, cwd=tmp_path, check=False).returncode == 0
    first = sorted((tmp_path / "proto").glob("*.proto"))[0]
    first.write_text(first.read_text() + "\n// changed\n")
    proc = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "make proto" in proc.stdout


def test_no_service_depends_on_seccomp_or_capnp_but_grainmgr() -> None:
    for svc in ("auth", "backup", "frontend"):
        text = (ROOT / "services" / svc / "pyproject.toml").read_text()
        assert "pyseccomp" not in text and "pycapnp" not in text, svc
    text = (ROOT / "services" / "grainmgr" / "pyproject.toml").read_text()
    assert "pyseccomp" in text and "pycapnp" in text
