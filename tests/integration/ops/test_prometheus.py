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
    from tests.support.ports import free_port

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


def _unlabelled_existing() -> dict[str, str]:
    """Catalogue families marked exists that have no labels, by name -> type.

    prometheus_client exports a sample for these from the start (a labelled family shows up
    only once a label value is used), so a scrape must see every one of them.
    """
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| `(grainhouse_[a-z0-9_]+)` \| (counter|gauge|histogram) \| — \| exists \|",
        text,
        re.MULTILINE,
    )
    return dict(rows)


def test_every_unlabelled_catalogue_entry_is_scraped(prometheus: Prometheus) -> None:
    wanted = _unlabelled_existing()
    assert "grainhouse_grainmgr_grains_starting" in wanted
    assert "grainhouse_auth_db_pool_max_connections" in wanted

    def missing() -> set[str]:
        names = set(prometheus.api("label/__name__/values"))
        series = {
            # A histogram is seen through its _count series.
            name + ("_count" if kind == "histogram" else "")
            for name, kind in wanted.items()
        }
        return series - names

    wait_for(lambda: not missing(), 60, f"every unlabelled family (missing {missing()})")
    # Nothing is starting in an idle stack: the gauge really comes back down to 0.
    (row,) = prometheus.query("grainhouse_grainmgr_grains_starting")
    assert row["value"][1] == "0"


def test_db_pool_usage_of_every_service_is_plausible(prometheus: Prometheus) -> None:
    db_services = ("auth", "grainmgr", "backup")

    def pools() -> dict[str, dict[str, float]] | None:
        found: dict[str, dict[str, float]] = {}
        for svc in db_services:
            figures: dict[str, float] = {}
            for row in prometheus.query(f"grainhouse_{svc}_db_pool_connections"):
                figures[row["metric"]["state"]] = float(row["value"][1])
            for name in ("max_connections", "waiting_requests"):
                rows = prometheus.query(f"grainhouse_{svc}_db_pool_{name}")
                if rows:
                    figures[name] = float(rows[0]["value"][1])
            if len(figures) < 4:
                return None
            found[svc] = figures
        return found

    seen = wait_for(pools, 60, "db_pool families of auth, grainmgr and backup")
    for svc, f in seen.items():
        assert f["max_connections"] == 8, (svc, f)  # grainhouse_common.db's pool size
        open_now = f["in_use"] + f["idle"]
        # The pool keeps min_size=1 connection open and never exceeds its maximum.
        assert 1 <= open_now <= f["max_connections"], (svc, f)
        assert f["in_use"] >= 0 and f["idle"] >= 0 and f["waiting_requests"] >= 0, (svc, f)


def test_a_failed_password_login_is_counted(prometheus: Prometheus, stack: Stack) -> None:
    import grpc

    from grainhouse_proto import auth_pb2, auth_pb2_grpc

    series = 'grainhouse_auth_login_failures_total{method="password",reason="bad_credentials"}'

    def value() -> float:
        rows = prometheus.query(series)
        return float(rows[0]["value"][1]) if rows else 0.0

    wait_for(lambda: _all_up(prometheus), 60, "every target up")
    before = value()
    addr = stack.status()["services"]["auth"]["grpc"]
    with grpc.insecure_channel(addr) as channel:
        stub = auth_pb2_grpc.AuthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.LoginPassword(
                auth_pb2.LoginPasswordRequest(
                    email="nobody-here@example.com",
                    password="certainly wrong",
                    client=auth_pb2.ClientInfo(remote_addr="192.0.2.7"),
                ),
                timeout=30,
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wait_for(lambda: value() >= before + 1, 60, "the failure counted through Prometheus")
    assert value() == before + 1
    # The label values stay the bounded words: the email and address appear nowhere.
    for row in prometheus.query("grainhouse_auth_login_failures_total"):
        assert set(row["metric"]) >= {"method", "reason"}
        assert "example.com" not in json.dumps(row["metric"])
        assert "192.0.2.7" not in json.dumps(row["metric"])
