"""Small pieces behind the operations work: the advertised relay address, the bounded
reasons of the start-failure and login-failure counters, the database pool collector."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from pydantic import ValidationError

from grainhouse_auth import metrics as auth_metrics
from grainhouse_common import metrics as common_metrics
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_grainmgr import metrics as grainmgr_metrics
from grainhouse_grainmgr.settings import GrainmgrSettings, advertised_relay

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("advertise", "bound", "expected"),
    [
        ("", "127.0.0.1:40123", "127.0.0.1:40123"),  # default: where the relay listens
        ("", "0.0.0.0:7004", "127.0.0.1:7004"),  # a wildcard is no address to dial
        ("grainmgr:7004", "0.0.0.0:7004", "grainmgr:7004"),
        ("grainmgr", "0.0.0.0:40999", "grainmgr:40999"),  # host alone: the real port
        ("relay.example.net:443", "0.0.0.0:7004", "relay.example.net:443"),
        ("[fd00::5]:7004", "[::]:7004", "[fd00::5]:7004"),
    ],
)
def test_advertised_relay(advertise: str, bound: str, expected: str) -> None:
    assert advertised_relay(advertise, bound) == expected


def _settings(advertise: str) -> GrainmgrSettings:
    return GrainmgrSettings(database_url="postgresql://x@y/z", relay_advertise=advertise)


def test_relay_advertise_is_validated() -> None:
    assert _settings("grainmgr:7004").relay_advertise == "grainmgr:7004"
    assert _settings(" grainmgr ").relay_advertise == "grainmgr"
    for bad in ("http://grainmgr:7004", "grainmgr:0", "grainmgr:70000", "grainmgr:port", ":7004"):
        with pytest.raises(ValidationError):
            _settings(bad)


@pytest.mark.parametrize(
    ("kind", "message", "reason"),
    [
        (
            "internal",
            "sandbox set-up failed at create user, mount, pid, net, ipc, uts and cgroup "
            "namespaces: Operation not permitted",
            "namespaces",
        ),
        ("internal", "sandbox set-up failed at join the grain's cgroup: EACCES", "cgroup"),
        ("internal", "sandbox set-up failed at mount the new root: mount refused", "mounts"),
        ("internal", "sandbox set-up failed at pivot_root and detach the old root: x", "mounts"),
        ("internal", "sandbox set-up failed at load the seccomp filter: EINVAL", "seccomp"),
        ("internal", "sandbox set-up failed at apply the Landlock ruleset: x", "seccomp"),
        (
            "internal",
            "sandbox set-up failed at exec /usr/bin/python3 in the sandbox: No such file",
            "exec_failed",
        ),
        ("unavailable", "writing the uid/gid map: Operation not permitted", "namespaces"),
        ("unavailable", "creating the grain's cgroup: Permission denied", "cgroup"),
        ("unavailable", "no free grain uid: too many running grains", "spawn_refused"),
        ("unavailable", "the fork server died", "spawn_refused"),
        ("internal", "sandbox set-up failed at reset signals: x", "other"),
        ("internal", "the sandbox did not come up in time", "other"),
    ],
)
def test_spawn_failure_reasons_are_bounded(kind: str, message: str, reason: str) -> None:
    got = grainmgr_metrics.spawn_failure_reason(kind, message)
    assert got == reason
    assert got in grainmgr_metrics.SPAWN_FAILURE_REASONS


def _count(**labels: str) -> float:
    value = REGISTRY.get_sample_value("grainhouse_auth_login_failures_total", labels)
    return value or 0.0


def test_login_failures_keep_their_labels_bounded() -> None:
    before = _count(method="other", reason="other")
    auth_metrics.login_failed("a-user@example.com", "his password was hunter2")
    assert _count(method="other", reason="other") == before + 1


def test_counted_maps_a_raised_kind_to_a_reason() -> None:
    async def refuse(kind: Kind) -> None:
        raise GrainhouseError(kind, "no")

    async def ok() -> str:
        return "fine"

    limited = _count(method="password", reason="rate_limited")
    bad = _count(method="token", reason="bad_credentials")
    with pytest.raises(GrainhouseError):
        asyncio.run(auth_metrics.counted("password", refuse(Kind.OVERLOADED)))
    with pytest.raises(GrainhouseError):
        asyncio.run(auth_metrics.counted("token", refuse(Kind.UNAUTHENTICATED)))
    with pytest.raises(GrainhouseError):  # a malformed request is no login failure
        asyncio.run(auth_metrics.counted("token", refuse(Kind.INVALID)))
    assert asyncio.run(auth_metrics.counted("token", ok())) == "fine"
    assert _count(method="password", reason="rate_limited") == (limited + 1)
    assert _count(method="token", reason="bad_credentials") == bad + 1


def _logins(**labels: str) -> float:
    value = REGISTRY.get_sample_value("grainhouse_auth_logins_total", labels)
    return value or 0.0


def test_successful_logins_are_counted_by_bounded_method_and_factor() -> None:
    plain = _logins(method="password", second_factor="none")
    with_code = _logins(method="email", second_factor="totp")
    other = _logins(method="other", second_factor="other")
    auth_metrics.login_succeeded("password")
    auth_metrics.login_succeeded("email+totp")
    auth_metrics.login_succeeded("someone@example.com+secret")  # never a label value
    assert _logins(method="password", second_factor="none") == plain + 1
    assert _logins(method="email", second_factor="totp") == with_code + 1
    assert _logins(method="other", second_factor="other") == other + 1


def test_db_pool_collector_reads_the_stats_at_scrape_time() -> None:
    stats = {"pool_size": 5, "pool_available": 2, "pool_max": 8, "requests_waiting": 0}
    registry = CollectorRegistry()
    registry.register(common_metrics.DbPoolCollector("backup", lambda: stats))
    first = generate_latest(registry).decode()
    assert 'grainhouse_backup_db_pool_connections{state="in_use"} 3.0' in first
    assert 'grainhouse_backup_db_pool_connections{state="idle"} 2.0' in first
    assert "grainhouse_backup_db_pool_max_connections 8.0" in first
    assert "grainhouse_backup_db_pool_waiting_requests 0.0" in first
    stats.update(pool_available=0, requests_waiting=4)  # nothing polls: the next scrape sees it
    second = generate_latest(registry).decode()
    assert 'grainhouse_backup_db_pool_connections{state="in_use"} 5.0' in second
    assert "grainhouse_backup_db_pool_waiting_requests 4.0" in second


def test_a_second_pool_of_a_service_takes_over_its_families() -> None:
    # (The default registry of this test process gets backup's families: harmless.)
    first = common_metrics.watch_db_pool("backup", lambda: {"pool_max": 1})
    second = common_metrics.watch_db_pool("backup", lambda: {"pool_max": 2})
    assert first is second
    text = "".join(
        f"{m.name} {s.value}\n" for m in second.collect() for s in m.samples if s.labels == {}
    )
    assert "grainhouse_backup_db_pool_max_connections 2" in text
