"""The whole stack: health, metrics, restarts, outages of PostgreSQL and NATS, identity."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import nats
import psycopg
import pytest

from grainhouse_common import rpc
from grainhouse_proto import auth_pb2, auth_pb2_grpc

from .conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("platform-stack")]

APP_SERVICES = ("auth", "grainmgr", "backup", "frontend")


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_service_is_healthy_and_serves_metrics(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    assert set(APP_SERVICES) <= set(services)
    for name in APP_SERVICES:
        status, body = fetch(services[name]["metrics"])
        assert status == 200
        assert 'grainhouse_build_info{python="' in body
        assert f'service="{name}"' in body
    status, body = fetch(f"http://{services['frontend']['listen']}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    for name in ("auth", "grainmgr", "backup"):
        assert asyncio.run(rpc.check_health(services[name]["grpc"]))


def test_kill_9_of_a_service_is_restarted_and_healthy_again(stack: Stack) -> None:
    before = stack.wait_all_healthy()["backup"]["pid"]
    os.kill(before, signal.SIGKILL)
    wait_until(
        lambda: (s := stack.services()["backup"])["pid"] != before and s["healthy"],
        what="backup restarted",
    )
    assert "backup exited" in stack.log()
    stack.wait_all_healthy()


def _issue_token(addr: str, key: str, rid: str | None = None) -> str:
    async def call() -> str:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            md = (("x-request-id", rid),) if rid else None
            reply = await stub.IssueAdminToken(
                auth_pb2.IssueAdminTokenRequest(
                    operator_key=auth_pb2.OperatorKey(key_secret=key), name="test"
                ),
                metadata=md,
                timeout=10,
            )
            return str(reply.token_secret)

    return asyncio.run(call())


def _operator_key(stack: Stack) -> str:
    return (stack.data_dir / "auth" / "operator.key").read_text().strip()


def test_postgres_restart_services_recover(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    pg_pid = services["postgres"]["pid"]
    os.kill(pg_pid, signal.SIGINT)  # fast shutdown, as an operator's restart would do
    wait_until(lambda: stack.services()["postgres"]["pid"] != pg_pid, 60, "postgres restart")
    after = stack.wait_all_healthy(90)
    for name in APP_SERVICES:  # nobody crashed: same processes, recovered
        assert after[name]["pid"] == services[name]["pid"], name
    # Not only "healthy": the database path works again.
    assert _issue_token(after["auth"]["grpc"], _operator_key(stack)).startswith("ghp_")


def _ppid(proc: Path) -> int:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def test_hung_postgres_reads_unhealthy_then_recovers(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    postmaster = services["postgres"]["pid"]
    # PostgreSQL puts each backend in its own process group: stop them one by one.
    family = [postmaster] + [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == postmaster
    ]
    for pid in family:
        os.kill(pid, signal.SIGSTOP)  # every PostgreSQL process stops answering
    try:
        wait_until(lambda: not stack.services()["auth"]["healthy"], 60, "auth unhealthy")
        assert stack.services()["auth"]["pid"] == services["auth"]["pid"]
    finally:
        for pid in family:
            os.kill(pid, signal.SIGCONT)
    after = stack.wait_all_healthy(90)
    assert after["auth"]["pid"] == services["auth"]["pid"]


def test_nats_restart_services_recover(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    os.kill(services["nats"]["pid"], signal.SIGKILL)
    wait_until(lambda: stack.services()["nats"]["pid"] != services["nats"]["pid"], 60, "nats")
    after = stack.wait_all_healthy(90)
    for name in APP_SERVICES:
        assert after[name]["pid"] == services[name]["pid"], name

    def reconnected() -> bool:
        return all(
            f'grainhouse_{name}_dependency_up{{dependency="nats"}} 1.0'
            in fetch(after[name]["metrics"])[1]
            for name in APP_SERVICES
        )

    wait_until(reconnected, 60, "every service back on NATS")
    # Events flow again through the new server.
    assert _issue_token(after["auth"]["grpc"], _operator_key(stack)).startswith("ghp_")


def test_request_id_travels_through_grpc_into_logs_and_nats_headers(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    nats_url = services["nats"]["nats"]
    rid = "testrid-" + os.urandom(4).hex()

    async def scenario() -> dict[str, str]:
        nc = await nats.connect(nats_url)
        got: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            if not got.done():
                got.set_result(dict(msg.headers or {}))

        await nc.subscribe("grainhouse.auth.audit.>", cb=on_msg)
        await nc.flush()
        async with grpc.aio.insecure_channel(services["auth"]["grpc"]) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.IssueAdminToken(
                    auth_pb2.IssueAdminTokenRequest(
                        operator_key=auth_pb2.OperatorKey(key_secret="wrong"), name="x"
                    ),
                    metadata=(("x-request-id", rid),),
                    timeout=10,
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        headers = await asyncio.wait_for(got, 10)
        await nc.close()
        return headers

    headers = asyncio.run(scenario())
    assert headers.get("X-Request-Id") == rid
    lines = (stack.data_dir / "logs" / "auth.log").read_text().splitlines()
    tagged = [json.loads(line) for line in lines if rid in line]
    assert tagged and all(t["request_id"] == rid for t in tagged)


def test_admin_api_token_cli_prints_a_working_token(stack: Stack) -> None:
    import subprocess

    from .conftest import GRAINHOUSE

    proc = subprocess.run(
        [GRAINHOUSE, "admin", "api-token", "--data-dir", str(stack.data_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    out = json.loads(proc.stdout)
    assert out["url"].startswith("http://localhost:")
    services = stack.wait_all_healthy()

    async def authenticate(secret: str) -> auth_pb2.AuthenticateTokenResponse:
        async with grpc.aio.insecure_channel(services["auth"]["grpc"]) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            return await stub.AuthenticateToken(
                auth_pb2.AuthenticateTokenRequest(bearer_secret=secret), timeout=10
            )

    reply = asyncio.run(authenticate(out["token"]))
    assert reply.principal.is_admin
    assert reply.principal.scope == auth_pb2.SCOPE_ADMIN
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(authenticate(out["token"][:-2] + "xx"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The secret never reaches a log line.
    for log in (stack.data_dir / "logs").glob("*.log"):
        assert out["token"] not in log.read_text(errors="replace"), log.name


def _service_url(stack: Stack, svc: str) -> str:
    return (stack.data_dir / "secrets" / f"{svc}-database-url").read_text().strip()


def test_each_service_role_touches_only_its_own_schema(stack: Stack) -> None:
    stack.wait_all_healthy()
    with psycopg.connect(_service_url(stack, "auth"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] >= 1
        for foreign in ("grainmgr.packages", "backup.backups"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {foreign}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.intruder (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE SCHEMA intruder")
    with psycopg.connect(_service_url(stack, "grainmgr"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM auth.api_tokens")


def test_second_up_on_the_same_data_dir_is_refused(stack: Stack) -> None:
    import subprocess

    from .conftest import GRAINHOUSE

    proc = subprocess.run(
        [GRAINHOUSE, "up", "--data-dir", str(stack.data_dir), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already running" in lines[0]
    assert str(stack.proc.pid) in lines[0]  # type: ignore[union-attr]
    stack.wait_all_healthy()


def test_sigterm_to_a_service_is_a_clean_exit_0(stack: Stack) -> None:
    services = stack.wait_all_healthy()
    pid = services["grainmgr"]["pid"]
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: "grainmgr exited" in stack.log(), 60, "grainmgr to exit")
    assert "grainmgr exited (code 0)" in stack.log()
    log = (stack.data_dir / "logs" / "grainmgr.log").read_text()
    assert '"msg": "stopping"' in log and '"msg": "stopped"' in log
    after = stack.wait_all_healthy(90)
    assert after["grainmgr"]["pid"] != pid
