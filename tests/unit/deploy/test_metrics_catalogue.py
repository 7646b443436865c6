"""docs/metrics.md against the metric families the code defines (nothing is scraped)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.conftest import DEPLOY, Entry, metric_names_in

pytestmark = pytest.mark.unit

# Run in a fresh interpreter: it creates every family each service creates at start
# (the shared ones by calling the same factories the runtime calls) and lists the
# default registry, without touching this test process's registry.
_DUMP = r"""
import importlib, importlib.util, json
from prometheus_client import REGISTRY
from grainhouse_common import metrics
GRPC = ("auth", "grainmgr", "backup")
for svc in ("auth", "grainmgr", "backup", "frontend"):
    metrics.dependency_metrics(svc)
    if svc in GRPC:
        metrics.rpc_metrics(svc)
        # Every gRPC service owns a database pool; its families come from a collector that
        # reads the pool at scrape time (no pool needed to list them).
        metrics.watch_db_pool(svc, dict)
    # A service's own families live in its metrics modules (imported at start).
    for mod in (f"grainhouse_{svc}.metrics", f"grainhouse_{svc}.http_metrics"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
out = {}
# The private fields are the only place an unlabelled-yet family's labels are kept.
for collector in list(REGISTRY._collector_to_names):
    if isinstance(collector, metrics.DbPoolCollector):
        for suffix, _help, labels in metrics.DB_POOL_FAMILIES:
            out[collector.prefix + suffix] = {"type": "gauge", "labels": list(labels)}
        continue
    name = getattr(collector, "_name", None)
    kind = getattr(collector, "_type", None)
    if not name or not name.startswith("grainhouse_"):
        continue
    if kind == "counter":
        name += "_total"
    out[name] = {"type": kind, "labels": list(collector._labelnames)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def defined() -> dict[str, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP], capture_output=True, text=True, check=True, timeout=120
    )
    found: dict[str, dict[str, object]] = json.loads(proc.stdout)
    assert "grainhouse_build_info" in found, "the dump found no families at all"
    return found


def test_every_existing_catalogue_entry_is_defined_as_written(
    catalogue: dict[str, Entry], defined: dict[str, dict[str, object]]
) -> None:
    existing = [e for e in catalogue.values() if e.status == "exists"]
    assert len(existing) >= 10
    for entry in existing:
        assert entry.name in defined, f"{entry.name} is marked exists but the code lacks it"
        code = defined[entry.name]
        assert code["type"] == entry.type, f"{entry.name}: code says {code['type']}"
        assert tuple(code["labels"]) == entry.labels, f"{entry.name}: code has {code['labels']}"


def test_every_defined_family_is_catalogued_and_marked_exists(
    catalogue: dict[str, Entry], defined: dict[str, dict[str, object]]
) -> None:
    for name in defined:
        assert name in catalogue, f"{name} is exported but missing from docs/metrics.md"
        assert catalogue[name].status == "exists", (
            f"{name} is defined in the code now: mark it 'exists' in docs/metrics.md"
        )


def test_names_follow_prometheus_conventions(catalogue: dict[str, Entry]) -> None:
    services = ("auth", "grainmgr", "backup", "frontend")
    for entry in catalogue.values():
        if entry.name != "grainhouse_build_info":
            assert entry.name.split("_")[1] in services, entry.name
        if entry.type == "counter":
            assert entry.name.endswith("_total"), entry.name
        else:
            assert not entry.name.endswith("_total"), entry.name
        if entry.type == "histogram":
            assert entry.name.endswith(("_seconds", "_bytes")), entry.name
        # Base units only.
        assert not re.search(r"_(milliseconds|ms|kilobytes|megabytes|minutes|hours)\b", entry.name)


def test_labels_are_bounded(catalogue: dict[str, Entry]) -> None:
    unbounded = {"grain", "grain_id", "user", "user_id", "account", "token", "session", "path"}
    unbounded |= {"url", "host", "id", "email", "error", "message", "ip", "schedule"}
    for entry in catalogue.values():
        assert not set(entry.labels) & unbounded, f"{entry.name} has {entry.labels}"


def test_the_issue_s_minimum_is_covered(catalogue: dict[str, Entry]) -> None:
    wanted = [
        "grainhouse_grainmgr_grains_running",
        "grainhouse_grainmgr_grains_starting",
        "grainhouse_grainmgr_grain_start_seconds",
        "grainhouse_grainmgr_grain_stops_total",
        "grainhouse_frontend_http_requests_total",
        "grainhouse_frontend_http_request_duration_seconds",
        "grainhouse_backup_runs_total",
        "grainhouse_backup_run_duration_seconds",
        "grainhouse_backup_written_bytes_total",
        "grainhouse_backup_restores_total",
        "grainhouse_auth_login_failures_total",
        "grainhouse_grainmgr_sandbox_spawn_failures_total",
    ]
    for svc in ("auth", "grainmgr", "backup"):
        wanted += [
            f"grainhouse_{svc}_grpc_requests_total",
            f"grainhouse_{svc}_db_pool_connections",
        ]
    for svc in ("auth", "grainmgr", "backup", "frontend"):
        wanted.append(f"grainhouse_{svc}_nats_errors_total")
    assert [w for w in wanted if w not in catalogue] == []
    assert catalogue["grainhouse_grainmgr_grain_stops_total"].labels == ("reason",)
    assert "route" in catalogue["grainhouse_frontend_http_requests_total"].labels


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_uses_only_catalogued_metrics(catalogue: dict[str, Entry]) -> None:
    exprs = _alert_exprs()
    assert len(exprs) >= 10
    for alert, expr in exprs:
        names = metric_names_in(expr, catalogue)
        assert alert == "GrainhouseServiceDown" or alert == "GrainhouseNoTargets" or names
        missing = names - set(catalogue)
        assert not missing, f"{alert} uses {sorted(missing)}, not in docs/metrics.md"


def test_alerts_cover_the_issue_s_list() -> None:
    alerts = {name for name, _ in _alert_exprs()}
    for needed in (
        "GrainhouseServiceDown",
        "GrainhouseGrainStartFailures",
        "GrainhouseBackupFailed",
        "GrainhouseBackupScheduleOverdue",
        "GrainhouseDiskNearlyFull",
        "GrainhouseHttpErrorRatioHigh",
        "GrainhouseGrpcErrorRatioHigh",
    ):
        assert needed in alerts


def test_the_catalogue_parser_sees_every_table_row() -> None:
    # A malformed row would be skipped silently by the parser: count rows independently.
    text = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text("utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `grainhouse_")]
    from tests.unit.deploy.conftest import read_catalogue

    assert len(rows) == len(read_catalogue())
