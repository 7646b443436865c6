"""The Prometheus configuration and alert rules, checked and exercised by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.conftest import DEPLOY

pytestmark = pytest.mark.unit

PROM = DEPLOY / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool missing: apt-get install prometheus (see tools/system-deps.sh)")
    return found


def run(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_config_is_valid() -> None:
    proc = run("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rules_are_valid() -> None:
    proc = run("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_fire_as_their_unit_tests_say() -> None:
    proc = run("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_really_rejects_a_broken_rule(tmp_path: Path) -> None:
    # Guards the three tests above against a promtool that accepts anything.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(\n",
        encoding="utf-8",
    )
    assert run("check", "rules", str(bad), cwd=tmp_path).returncode != 0


def test_every_alert_has_severity_summary_and_a_unique_name() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
    assert len(names) == len(set(names))


def test_alert_unit_tests_cover_the_paging_families() -> None:
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text(encoding="utf-8"))
    covered = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])}
    for alert in (
        "GrainhouseServiceDown",
        "GrainhouseDependencyDown",
        "GrainhouseHttpErrorRatioHigh",
        "GrainhouseGrpcErrorRatioHigh",
        "GrainhouseGrainStartFailures",
        "GrainhouseBackupFailed",
        "GrainhouseBackupScheduleOverdue",
        "GrainhouseDiskNearlyFull",
        "GrainhouseSandboxSpawnFailures",
        "GrainhouseAppStartFailures",
        "GrainhouseLoginFailuresHigh",
        "GrainhouseLoginFailureSpike",
    ):
        assert alert in covered
