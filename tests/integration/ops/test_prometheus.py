"""A real Prometheus scrapes a running stack; the deploy/ artefacts work against it.

The stack is `grainhouse up` (the compose topology as processes); Prometheus is Debian's
`prometheus` binary on a free port with its own storage, given the same job names and the
same alert rules as deploy/prometheus/.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.ops.conftest import DEPLOY, ROOT, SERVICES, Prometheus, Stack, wait_for

pytestmark = pytest.mark.integration


def _catalogue() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(grainhouse_[a-z0-9_]+)` \|", text, re.MULTILINE))


def _all_up(prometheus: Prometheus) -> dict[str, str] | None:
    result = prometheus.query('up{job=~"grainhouse-.*"}')
    seen = {r["metric"]["job"]: r["value"][1] for r in result}
    if len(seen) == len(SERVICES) and all(v == "1" for v in seen.values()):
        return seen
    return None


def test_prometheus_sees_every_service_up(prometheus: Prometheus) -> None:
    seen = wait_for(lambda: _all_up(prometheus), 60, "every target up")
    assert set(seen) == {f"grainhouse-{svc}" for svc in SERVICES}
    targets = prometheus.api("targets")["activeTargets"]
    assert {t["health"] for t in targets} == {"up"}


def test_build_info_names_each_service(prometheus: Prometheus) -> None:
    wait_for(lambda: _all_up(prometheus), 60, "every target up")
    result = prometheus.query("grainhouse_build_info")
    by_job = {r["metric"]["job"]: r["metric"] for r in result}
    assert set(by_job) == {f"grainhouse-{svc}" for svc in SERVICES}
    for svc in SERVICES:
        labels = by_job[f"grainhouse-{svc}"]
        assert labels["service"] == svc
        assert labels["version"] and labels["python"].startswith("3.")


def test_every_exported_family_is_in_the_catalogue(prometheus: Prometheus) -> None:
    wait_for(lambda: _all_up(prometheus), 60, "every target up")

    def dependency_series() -> list[dict[str, Any]]:
        # Present once each service has connected at least once.
        found = prometheus.query('{__name__=~"grainhouse_.+_dependency_up"}')
        return found if len({r["metric"]["job"] for r in found}) == len(SERVICES) else []

    wait_for(dependency_series, 60, "dependency_up of every service")
    names = prometheus.api("label/__name__/values")
    exported = {n for n in names if n.startswith("grainhouse_")}
    catalogue = _catalogue()
    families = set()
    for name in exported:
        for suffix in ("_bucket", "_count", "_sum", "_created"):
            if name.endswith(suffix) and name.removesuffix(suffix) in catalogue:
                name = name.removesuffix(suffix)
        # prometheus_client's creation-time series of a counter drops the `_total`.
        if name.endswith("_created") and name.replace("_created", "_total") in catalogue:
            name = name.replace("_created", "_total")
        families.add(name)
    assert families - catalogue == set(), "exported but not in docs/metrics.md"
    assert "grainhouse_build_info" in families
    # Dependencies really answer in a healthy stack.
    for row in prometheus.query('{__name__=~"grainhouse_.+_dependency_up"}'):
        assert row["value"][1] == "1", row["metric"]


def test_gateway_traffic_is_labelled_by_route_template(
    prometheus: Prometheus, stack: Stack
) -> None:
    import urllib.request

    listen = stack.status()["services"]["frontend"]["listen"]
    for path in ("/healthz", "/no/such/page/1234", "/no/such/page/5678"):
        # A 404 (raised as HTTPError, an OSError) is what the unknown paths should get.
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://{listen}{path}", timeout=10).close()

    def routes() -> set[str]:
        rows = prometheus.query("grainhouse_frontend_http_requests_total")
        return {r["metric"]["route"] for r in rows}

    seen = wait_for(lambda: routes() if "/healthz" in routes() else None, 60, "/healthz")
    # The unmatched paths collapse into one bounded label value.
    assert not any("1234" in r or "5678" in r for r in seen)


def test_alert_rules_load_and_evaluate_cleanly(prometheus: Prometheus) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if rules and all(r.get("lastEvaluation", "0001").startswith("2") for r in rules)
            else None
        )

    rules = wait_for(evaluated, 60, "every rule evaluated once")
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text("utf-8"))
    names = {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == names
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert bad == {}
    # A healthy stack pages nobody about availability.
    # Right after start `absent(up)` is briefly pending until the first scrapes land, so
    # poll until the next evaluations have seen every target (then it must stay quiet).
    wait_for(lambda: _all_up(prometheus), 60, "every target up")

    def availability_alerts() -> set[str]:
        listed = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
        return listed & {"GrainhouseServiceDown", "GrainhouseNoTargets"}

    wait_for(lambda: not availability_alerts(), 60, "no availability alert pending")
    assert _all_up(prometheus)


def test_every_dashboard_query_is_valid_promql(prometheus: Prometheus) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "grainhouse.json").read_text("utf-8"))
    count = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            # Grafana fills $__rate_interval in; any range works for a syntax check.
            expr = target["expr"].replace("$__rate_interval", "1m")
            prometheus.query(expr)  # asserts status == success
            count += 1
    assert count >= 20
    # Ones on existing metrics return data already.
    assert prometheus.query('up{job=~"grainhouse-.*"}')


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_container_healthcheck_script_against_real_services(stack: Stack) -> None:
    services = stack.status()["services"]
    for svc in ("auth", "grainmgr", "backup"):
        proc = _healthcheck("grpc", services[svc]["grpc"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _healthcheck("http", f"http://{services['frontend']['listen']}/healthz")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And it says no when nobody answers.
    from tests.integration.ops.conftest import free_port

    dead = free_port()
    assert _healthcheck("grpc", f"127.0.0.1:{dead}", "--timeout", "1").returncode == 1
    assert _healthcheck("http", f"http://127.0.0.1:{dead}/healthz").returncode == 1


def test_db_init_provisions_like_grainhouse_up(stack: Stack, tmp_path: Path) -> None:
    # Run compose's one-shot job against the stack's PostgreSQL with the very secrets the
    # running services use: idempotent, and afterwards each role still logs in and owns
    # only its own schema.
    secrets = stack.data_dir / "secrets"
    status = stack.status()
    pg = status["services"]["postgres"]
    port = int(str(pg.get("tcp") or pg.get("addr") or pg["listen"]).rsplit(":", 1)[1])
    urls = {
        svc: (secrets / f"{svc}-database-url").read_text().strip()
        for svc in ("auth", "grainmgr", "backup")
    }
    args = [
        sys.executable,
        str(DEPLOY / "db_init.py"),
        "--host=127.0.0.1",
        f"--port={port}",
        "--dbname=grainhouse",
        "--admin-user=grainhouse",
        f"--admin-password-file={secrets / 'postgres-admin'}",
        "--wait-seconds=10",
    ]
    for svc in urls:
        args.append(f"--service={svc}={secrets / f'{svc}-database-url'}")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("role and schema ready") == 3
    for svc, url in urls.items():
        assert url.split("password=")[-1].split()[0] not in proc.stdout + proc.stderr
        with psycopg.connect(url) as conn:
            schemas = {
                row[0]
                for row in conn.execute(
                    "SELECT nspname FROM pg_namespace WHERE pg_has_role(nspowner, 'USAGE')"
                )
            }
            assert schemas == {svc}
    # A URL for the wrong role is refused before PostgreSQL is touched.
    wrong = tmp_path / "wrong"
    wrong.write_text(urls["auth"].replace("grainhouse_auth", "grainhouse_backup"))
    bad = subprocess.run(
        [*args[:8], f"--service=auth={wrong}"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "must log in as grainhouse_auth" in bad.stderr
