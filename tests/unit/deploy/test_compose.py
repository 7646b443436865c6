"""deploy/compose.yaml checked without a Docker engine (the images: test_images.py).

Every file, port, volume, secret, setting and healthcheck the compose file references is
checked against the thing it names: the settings classes accept the environment, the
Dockerfile has the targets and exposes the ports, the healthchecks probe the ports the
services listen on, Prometheus scrapes the metrics ports.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from grainhouse_auth.settings import AuthSettings
from grainhouse_backup.settings import BackupSettings
from grainhouse_common import settings as settingsmod
from grainhouse_frontend.settings import FrontendSettings
from grainhouse_grainmgr.settings import GrainmgrSettings
from tests.unit.deploy.conftest import DEPLOY, SERVICES, load_module

pytestmark = pytest.mark.unit

SETTINGS = {
    "auth": AuthSettings,
    "grainmgr": GrainmgrSettings,
    "backup": BackupSettings,
    "frontend": FrontendSettings,
}
# Containers that may run as uid 0 (without capabilities), each with its reason in
# compose.yaml.
ROOT_ALLOWED = {"nats"}


# ---- compose: health and start order ------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        if svc.get("restart") == "no":
            assert "healthcheck" not in svc, f"{name} is one-shot: nothing to check"
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] == "CMD", f"{name}: use the exec form, no shell"
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: healthcheck without {key}"


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    edges = 0
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must say a condition"
        for dep, how in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            target = services[dep]
            if target.get("restart") == "no":
                assert how["condition"] == "service_completed_successfully"
            else:
                assert how["condition"] == "service_healthy", f"{name} -> {dep}"
                assert "healthcheck" in target
            edges += 1
    assert edges >= 8


def test_start_order_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()
    remaining = dict(services)
    while remaining:
        ready = [n for n, s in remaining.items() if set(s.get("depends_on", {})) <= done]
        assert ready, f"cycle among {sorted(remaining)}"
        for n in ready:
            done.add(n)
            del remaining[n]


def test_grainhouse_services_wait_for_their_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    for svc in ("auth", "grainmgr", "backup"):
        assert {"db-init", "nats"} <= set(services[svc]["depends_on"])
    assert {"auth", "grainmgr", "nats"} <= set(services["frontend"]["depends_on"])
    assert services["db-init"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


# ---- compose: volumes, secrets, networks ---------------------------------------------------


def test_volumes_are_named_or_read_only_files(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for spec in svc.get("volumes", []):
            source, target, *mode = spec.split(":")
            assert target.startswith("/"), spec
            if source.startswith((".", "/")):
                assert mode == ["ro"], f"{name}: bind mount {source} must be read-only"
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_secrets_are_files_made_by_gen_secrets(compose: dict[str, Any], tmp_path: Path) -> None:
    gen = load_module(DEPLOY / "gen_secrets.py")
    assert gen.main(["--dir", str(tmp_path / "secrets")]) == 0
    made = {p.name for p in (tmp_path / "secrets").iterdir()}
    files = {}
    for name, spec in compose["secrets"].items():
        path = Path(spec["file"])
        assert path.parent == Path("secrets"), f"{name}: secrets live in deploy/secrets/"
        files[name] = path.name
    assert set(files.values()) == made
    assert (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()[1] == "*"
    for name, svc in compose["services"].items():
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} not declared"


def test_secret_values_never_sit_in_the_environment(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        env = svc.get("environment", {})
        for key, value in env.items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), f"{name}: {key}"
            assert "DATABASE_URL" not in key or key.endswith("_FILE"), f"{name}: {key}"
            if key.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in svc["secrets"], key


def test_only_the_frontend_is_published(compose: dict[str, Any]) -> None:
    published = {n for n, s in compose["services"].items() if s.get("ports") or s.get("expose")}
    assert published == {"frontend"}
    assert compose["networks"]["internal"]["internal"] is True
    for name, svc in compose["services"].items():
        nets = set(svc["networks"])
        assert nets == ({"internal", "edge"} if name == "frontend" else {"internal"}), name
    (port,) = compose["services"]["frontend"]["ports"]
    container = int(port.rsplit(":", 1)[1])
    listen = compose["services"]["frontend"]["environment"]["GRAINHOUSE_FRONTEND_LISTEN"]
    assert listen == f"0.0.0.0:{container}"


def test_containers_are_unprivileged(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert not svc.get("privileged"), name
        assert "cap_add" not in svc, name
        assert svc["cap_drop"] == ["ALL"], name
        assert svc["read_only"] is True, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        user = str(svc.get("user", "0"))
        if name in ROOT_ALLOWED:
            assert "user" not in svc
        else:
            assert user.split(":")[0] not in ("0", "root"), name


def test_grainmgr_gets_its_profiles_instead_of_privileged(
    services: dict[str, dict[str, Any]],
) -> None:
    opts = services["grainmgr"]["security_opt"]
    seccomp = [o.split("=", 1)[1] for o in opts if o.startswith("seccomp=")]
    apparmor = [o.split("=", 1)[1] for o in opts if o.startswith("apparmor=")]
    assert seccomp == ["./seccomp/grainmgr.json"] and (DEPLOY / seccomp[0]).is_file()
    profile = (DEPLOY / "apparmor" / apparmor[0]).read_text(encoding="utf-8")
    assert re.search(rf"^profile {apparmor[0]} ", profile, re.MULTILINE)
    for other in ("auth", "backup", "frontend", "postgres", "nats", "prometheus"):
        assert not any(
            o.startswith(("seccomp=", "apparmor=")) for o in services[other].get("security_opt", [])
        ), f"{other} must keep Docker's default profiles"


# ---- compose: settings, ports, healthchecks, scraping agree ----------------------------------


def _resolved_env(svc: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    env = {}
    for key, value in svc["environment"].items():
        value = str(value)
        # ${VAR:-default} as compose would substitute it with nothing set.
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        if value.startswith("/run/secrets/"):
            value = str(secrets_dir / value.removeprefix("/run/secrets/"))
        env[key] = value
    return env


@pytest.mark.parametrize("svc", SERVICES)
def test_settings_classes_accept_the_compose_environment(
    svc: str, services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    gen = load_module(DEPLOY / "gen_secrets.py")
    gen.main(["--dir", str(tmp_path)])
    env = _resolved_env(services[svc], tmp_path)
    common = settingsmod.load(settingsmod.CommonSettings, env)
    own = settingsmod.load(SETTINGS[svc], env)
    assert str(common.data_dir) == "/var/lib/grainhouse"
    assert own.listen.startswith("0.0.0.0:") and own.metrics_listen.startswith("0.0.0.0:")
    if hasattr(own, "database_url"):
        assert own.database_url.get_secret_value().startswith(f"postgresql://grainhouse_{svc}:")
    # Peers are addressed by compose service name on their listen port.
    for peer in ("auth", "grainmgr", "backup"):
        peer_port = services[peer]["environment"][f"GRAINHOUSE_{peer.upper()}_LISTEN"]
        assert getattr(common, f"{peer}_addr") == f"{peer}:{peer_port.rsplit(':', 1)[1]}"
    nats_port = services["nats"]["command"][services["nats"]["command"].index("--port") + 1]
    assert common.nats_url == f"nats://nats:{nats_port}"


def test_grainmgr_advertises_a_relay_address_the_frontend_can_dial(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from grainhouse_grainmgr.settings import advertised_relay

    gen = load_module(DEPLOY / "gen_secrets.py")
    gen.main(["--dir", str(tmp_path)])
    own = settingsmod.load(GrainmgrSettings, _resolved_env(services["grainmgr"], tmp_path))
    listen_port = own.relay_listen.rsplit(":", 1)[1]
    assert own.relay_listen.startswith("0.0.0.0:")  # every interface: no address to dial
    # What OpenSession hands out: grainmgr's compose name on the relay's port.
    bound = f"0.0.0.0:{listen_port}"
    assert advertised_relay(own.relay_advertise, bound) == f"grainmgr:{listen_port}"
    assert "grainmgr" in services and "internal" in services["grainmgr"]["networks"]


@pytest.mark.parametrize("svc", SERVICES)
def test_healthcheck_probes_the_listen_port(svc: str, services: dict[str, dict[str, Any]]) -> None:
    env = services[svc]["environment"]
    port = env[f"GRAINHOUSE_{svc.upper()}_LISTEN"].rsplit(":", 1)[1]
    test = services[svc]["healthcheck"]["test"]
    assert test[1] == "grainhouse-healthcheck"
    if svc == "frontend":
        assert test[2:] == ["http", f"http://127.0.0.1:{port}/healthz"]
    else:
        assert test[2:] == ["grpc", f"127.0.0.1:{port}"]


def test_prometheus_scrapes_every_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    for svc in SERVICES:
        port = services[svc]["environment"][f"GRAINHOUSE_{svc.upper()}_METRICS_LISTEN"]
        assert jobs[f"grainhouse-{svc}"] == [f"{svc}:{port.rsplit(':', 1)[1]}"]
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/prometheus.yml" in mounts
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts
        assert (DEPLOY / "prometheus" / rule_file).is_file()


def test_infrastructure_healthchecks_match_their_ports(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]["healthcheck"]["test"]
    assert pg[1] == "pg_isready" and pg[pg.index("-p") + 1] == "5432"
    nats_cmd = services["nats"]["command"]
    assert "--jetstream" in nats_cmd
    monitor = nats_cmd[nats_cmd.index("--http_port") + 1]
    assert f"http://127.0.0.1:{monitor}/healthz" in services["nats"]["healthcheck"]["test"][-1]
    prom_listen = next(
        c for c in services["prometheus"]["command"] if c.startswith("--web.listen-address=")
    )
    prom_port = prom_listen.rsplit(":", 1)[1]
    assert services["prometheus"]["healthcheck"]["test"][-1] == (
        f"http://127.0.0.1:{prom_port}/-/healthy"
    )


def test_db_init_provisions_every_service_with_a_database(
    services: dict[str, dict[str, Any]],
) -> None:
    from grainhouse_common import provision

    init = services["db-init"]
    given = {a.split("=", 2)[1] for a in init["command"] if a.startswith("--service=")}
    assert given == set(provision.SERVICES_WITH_DB)
    for svc in provision.SERVICES_WITH_DB:
        assert f"{svc}_database_url" in init["secrets"]
