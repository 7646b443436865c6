"""`grainhouse app keygen|pack|verify` as a user runs them: a real child process."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def app(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grainhouse_cli.app_commands", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_keygen_pack_verify(app_dir: Path, tmp_path: Path) -> None:
    made = app("keygen", "-o", "author.key", "--json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    app_id = json.loads(made.stdout)["app_id"]
    assert stat.S_IMODE((tmp_path / "author.key").stat().st_mode) == 0o600

    packed = app("pack", str(app_dir), "-o", "app.pkg", "--key", "author.key", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    assert app_id in packed.stdout

    checked = app("verify", "app.pkg", "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    doc = json.loads(checked.stdout)
    assert set(doc) == {"app_id", "package_id", "title", "version"}
    assert doc["app_id"] == app_id
    assert doc["title"] == "Test App" and doc["version"] == 2
    assert len(doc["package_id"]) == 64


def test_errors_are_one_line_on_stderr_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "junk.pkg").write_bytes(b"junk")
    bad = app("verify", "junk.pkg", "--json", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip() == "error: not a grainhouse package (bad magic bytes)"

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "grainhouse.json").write_text("{}")
    app("keygen", "-o", "k.key", cwd=tmp_path)
    refused = app("pack", "d", "-o", "x.pkg", "--key", "k.key", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "manifest." in refused.stderr
    assert not (tmp_path / "x.pkg").exists()


def test_keygen_default_path_is_named_after_the_app_id(tmp_path: Path) -> None:
    made = app("keygen", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    app_id = made.stdout.strip()
    assert (tmp_path / f"{app_id}.key").is_file()
