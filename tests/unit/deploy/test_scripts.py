"""deploy/gen_secrets.py and deploy/db_init.py without a database: files, checks, refusals."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.conftest import DEPLOY

pytestmark = pytest.mark.unit


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gen_secrets_makes_readable_files_in_a_private_dir_and_never_overwrites(
    tmp_path: Path,
) -> None:
    gen = _load("gen_secrets")
    out = tmp_path / "secrets"
    assert gen.main(["--dir", str(out)]) == 0
    first = {p.name: p.read_text() for p in out.iterdir()}
    assert set(first) == {
        "postgres_admin_password",
        "auth_database_url",
        "grainmgr_database_url",
        "backup_database_url",
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert gen.main(["--dir", str(out)]) == 0
    assert {p.name: p.read_text() for p in out.iterdir()} == first
    passwords = [first["postgres_admin_password"].strip()]
    passwords += [
        first[f"{s}_database_url"].split(":")[2].split("@")[0]
        for s in ("auth", "grainmgr", "backup")
    ]
    assert len(set(passwords)) == 4 and all(len(p) >= 40 for p in passwords)


def test_db_init_accepts_what_gen_secrets_makes(tmp_path: Path) -> None:
    gen, init = _load("gen_secrets"), _load("db_init")
    gen.main(["--dir", str(tmp_path)])
    for svc in ("auth", "grainmgr", "backup"):
        url = (tmp_path / f"{svc}_database_url").read_text().strip()
        password = init.password_from_url(svc, url, "grainhouse")
        assert password and password in url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://grainhouse_backup:pw@postgres:5432/grainhouse", "log in as"),
        ("postgresql://grainhouse_auth:pw@postgres:5432/other", "name database"),
        ("postgresql://grainhouse_auth@postgres:5432/grainhouse", "no password"),
        ("postgresql://grainhouse_auth:pw%zz@postgres/grainhouse", "cannot be parsed"),
    ],
)
def test_db_init_refuses_a_wrong_url(url: str, problem: str) -> None:
    init = _load("db_init")
    with pytest.raises(ValueError, match=problem) as info:
        init.password_from_url("auth", url, "grainhouse")
    assert "pw" not in str(info.value)


def test_db_init_exits_2_on_missing_files_without_touching_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init = _load("db_init")
    code = init.main(
        [
            "--host=192.0.2.1",  # TEST-NET: nothing answers; we must fail before connecting
            f"--admin-password-file={tmp_path / 'missing'}",
            f"--service=auth={tmp_path / 'also-missing'}",
        ]
    )
    assert code == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "admin").write_text("secret-admin\n")
    assert init.main([f"--admin-password-file={tmp_path / 'admin'}", "--service=mail=x"]) == 2
    err = capsys.readouterr().err
    assert "expected one of" in err and "secret-admin" not in err
