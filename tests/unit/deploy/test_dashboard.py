"""The Grafana dashboard: well-formed, importable, and built on catalogued metrics only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.deploy.conftest import DEPLOY, Entry, metric_names_in

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "grainhouse.json").read_text(encoding="utf-8")
    )
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "grainhouse-overview"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_catalogued_metrics(
    dashboard: dict[str, Any], catalogue: dict[str, Entry]
) -> None:
    used: set[str] = set()
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            names = metric_names_in(target["expr"], catalogue)
            missing = names - set(catalogue)
            assert not missing, f"{panel['title']}: {sorted(missing)} not in docs/metrics.md"
            used |= names
    # The main figures of the issue are on the dashboard.
    for needed in (
        "grainhouse_grainmgr_grains_running",
        "grainhouse_grainmgr_grain_start_seconds",
        "grainhouse_frontend_http_requests_total",
        "grainhouse_frontend_http_request_duration_seconds",
        "grainhouse_backup_runs_total",
        "grainhouse_auth_login_failures_total",
        "grainhouse_auth_db_pool_connections",
        "grainhouse_grainmgr_db_pool_waiting_requests",
        "grainhouse_grainmgr_grains_starting",
        "grainhouse_grainmgr_sandbox_spawn_failures_total",
    ):
        assert needed in used
