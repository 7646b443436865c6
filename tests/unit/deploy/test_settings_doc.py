"""docs/configuration.md is exactly what tools/gen_settings_doc.py makes from the code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_settings_doc", ROOT / "tools" / "gen_settings_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_the_code() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == _tool().render(), (
        "docs/configuration.md is stale: run .venv/bin/python tools/gen_settings_doc.py"
    )


def test_every_setting_of_every_class_is_listed_with_a_description() -> None:
    tool = _tool()
    text = tool.render()
    from grainhouse_common.settings import env_names

    for _, cls, _ in tool.SECTIONS:
        for var, name in env_names(cls).items():
            row = re.search(rf"^\| `{re.escape(var)}` \|.*$", text, re.MULTILINE)
            assert row is not None, f"{var} missing"
            assert cls.model_fields[name].description, f"{var} has no description"
            assert row.group(0).rstrip().endswith(" |")


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    tool = _tool()
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert tool.main(["--check", "--output", str(stale)]) == 1
    assert tool.main(["--output", str(stale)]) == 0
    assert tool.main(["--check", "--output", str(stale)]) == 0


def test_secrets_show_no_default_and_are_marked_secret() -> None:
    text = _tool().render()
    row = next(line for line in text.splitlines() if "GRAINHOUSE_AUTH_DATABASE_URL`" in line)
    assert "secret" in row and "**required**" in row
