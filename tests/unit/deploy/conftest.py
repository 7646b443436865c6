"""Shared helpers for the static checks of deploy/ and the operator docs."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
CATALOGUE = ROOT / "docs" / "metrics.md"

_ROW = re.compile(
    r"^\| `(?P<name>grainhouse_[a-z0-9_]+)` \| (?P<type>counter|gauge|histogram) "
    r"\| (?P<labels>[^|]*) \| (?P<status>exists|planned) \|"
)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


@dataclass(frozen=True)
class Entry:
    name: str
    type: str
    labels: tuple[str, ...]
    status: str


def read_catalogue(path: Path = CATALOGUE) -> dict[str, Entry]:
    """docs/metrics.md's table rows, by metric name; fails on a row listed twice."""
    entries: dict[str, Entry] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        labels = tuple(re.findall(r"`([a-z_]+)`", match["labels"]))
        name = match["name"]
        assert name not in entries, f"{name} listed twice in {path.name}"
        entries[name] = Entry(name, match["type"], labels, match["status"])
    return entries


def metric_names_in(expr: str, catalogue: dict[str, Entry]) -> set[str]:
    """The catalogue names a PromQL expression uses (histogram series map to their family)."""
    found = set()
    for token in re.findall(r"\bgrainhouse_[a-z0-9_]+", expr):
        name = token
        for suffix in HISTOGRAM_SUFFIXES:
            base = token.removesuffix(suffix)
            if base != token and base in catalogue and catalogue[base].type == "histogram":
                name = base
        found.add(name)
    return found


@pytest.fixture(scope="session")
def catalogue() -> dict[str, Entry]:
    return read_catalogue()


SERVICES = ("auth", "grainmgr", "backup", "frontend")


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]
