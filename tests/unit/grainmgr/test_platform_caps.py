"""Platform without a sandbox: the bridge's `Platform` (bridge_platform) in front of grainmgr's
`PlatformBackend` (grain_platform), wired as in a grain (fd 3 is a socket pair, both ends
export a bootstrap) with a real app client on a Unix socket of its own name."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import capnp
import pytest

from grainhouse_grainmgr import bridge_platform, control, grain_platform
from grainhouse_grainmgr.control import BridgeClient
from grainhouse_grainmgr.running import Running

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_a_burst_then_its_rate_and_reports_drops_once_a_second() -> None:
    clock = Clock()
    budget = bridge_platform.Budget(burst=3, rate=2.0, clock=clock)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert budget.drops_to_report() == 2
    assert not budget.take()
    assert budget.drops_to_report() == 0  # reported less than a second ago
    clock.now += 0.5  # one token back
    assert budget.take()
    assert not budget.take()
    clock.now += 1.0
    assert budget.drops_to_report() == 2
    clock.now += 100  # never more than the burst
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


def test_log_lines_prefix_every_line_and_neutralize_controls() -> None:
    text = bridge_platform.log_lines("warning", "one\r\ntwo\x1b[2J\n[bridge] three")
    assert text == "[app warning] one\n[app warning] two?[2J\n[app warning] [bridge] three\n"
    assert bridge_platform.log_lines("info", "") == "[app info] \n"
    long = bridge_platform.log_lines("info", "é" * 10_000)
    assert len(long.encode()) <= bridge_platform.LOG_MAX_BYTES + len("[app info] \n")


def test_reasons_are_folded_and_bounded() -> None:
    clean = bridge_platform.clean_reason  # grainmgr applies the same function again
    assert clean("  sync\n\tmail\x00 now ") == "sync mail now"
    assert clean("why? because") == "why? because"
    with pytest.raises(ValueError, match="needs a reason"):
        clean(" \n\x07")
    with pytest.raises(ValueError, match="at most 200"):
        clean("x" * 201)
    assert clean("x" * 200) == "x" * 200
    assert clean("a\u2028b\u202ec\u00a0d") == "a b c d"  # separators, bidi, odd spaces


class Grain:
    """grainmgr and a bridge wired over a socket pair, the bridge's Platform on `name`."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp
        self.name = name
        self.running = Running("g1", "p1", cast(BridgeClient, None))
        self.measures = 0
        self.sessions: dict[str, dict[str, Any]] = {}
        self.log: list[str] = []

    def measure(self, path: Path) -> int:
        self.measures += 1
        return 12345


@asynccontextmanager
async def wired(tmp: Path) -> AsyncIterator[tuple[Grain, Any]]:
    schema = control.schema()
    grain = Grain(tmp, f"gh-test-{os.getpid()}-{id(tmp)}")
    ours, theirs = socket.socketpair()
    async with capnp.kj_loop():
        backend = grain_platform.make_backend(schema, grain.running, tmp, 2048, grain.measure)
        mgr = capnp.TwoPartyServer(
            await capnp.AsyncIoStream.create_unix_connection(sock=ours), bootstrap=backend
        )

        class Bridge(schema.Bridge.Server):  # type: ignore[misc]
            pass

        bridge_end = capnp.TwoPartyServer(
            await capnp.AsyncIoStream.create_unix_connection(sock=theirs), bootstrap=Bridge()
        )
        remote = bridge_end.bootstrap().cast_as(schema.PlatformBackend)
        budget = bridge_platform.Budget(bridge_platform.LOG_BURST, bridge_platform.LOG_PER_SECOND)
        server = await bridge_platform.listen(
            capnp,
            lambda: bridge_platform.make_platform(
                schema, remote, grain.sessions.get, grain.log.append, budget
            ),
            name=grain.name,
        )
        try:
            yield grain, schema
        finally:
            server.close()
            mgr.close()
            bridge_end.close()


async def app_client(grain: Grain, schema: Any) -> tuple[Any, Any]:
    stream = await capnp.AsyncIoStream.create_unix_connection(path="\0" + grain.name)
    client = capnp.TwoPartyClient(stream)
    return client, client.bootstrap().cast_as(schema.Platform)


async def settle(check: Callable[[], bool]) -> None:
    for _ in range(200):
        gc.collect()
        if check():
            return
        await asyncio.sleep(0.01)


async def test_wake_locks_are_capped_released_and_dropped_with_the_connection(
    tmp_path: Path,
) -> None:
    async with wired(tmp_path) as (grain, schema):
        client, platform = await app_client(grain, schema)
        locks = [(await platform.stayAwake(f"job {i}")).lock for i in range(4)]
        assert sorted(grain.running.wake_locks.values()) == [f"job {i}" for i in range(4)]
        with pytest.raises(capnp.KjException, match="too many wake locks"):
            await platform.stayAwake("job 4")
        await locks[0].release()
        await locks[0].release()  # idempotent
        assert sorted(grain.running.wake_locks.values()) == ["job 1", "job 2", "job 3"]
        # The app goes away without releasing: the rest end with its connection (pycapnp
        # closes the socket once the client object itself is gone).
        client.close()
        del locks, platform, client
        await settle(lambda: not grain.running.wake_locks)
        assert grain.running.wake_locks == {}


async def test_identity_usage_and_log_through_the_bridge(tmp_path: Path) -> None:
    async with wired(tmp_path) as (grain, schema):
        grain.sessions["s1"] = {
            "identity": {"userId": "u" * 32, "displayName": "Ann"},
            "permissions": ["view"],
        }
        client, platform = await app_client(grain, schema)
        who = await platform.getIdentity("s1")
        assert who.identity.userId == "u" * 32
        assert who.identity.displayName == "Ann"
        assert list(who.permissions) == ["view"]
        with pytest.raises(capnp.KjException, match="unknown session id"):
            await platform.getIdentity("s2")
        first = await platform.getStorageUsage()
        second = await platform.getStorageUsage()
        assert (first.sizeBytes, first.quotaBytes) == (12345, 2048)
        assert (second.sizeBytes, grain.measures) == (12345, 1)  # measured once in 10 s
        await platform.log("error", "it broke")
        assert grain.log == ["[app error] it broke\n"]
        client.close()


async def test_connections_beyond_the_limit_are_closed(tmp_path: Path) -> None:
    async with wired(tmp_path) as (grain, schema):
        clients = [await app_client(grain, schema) for _ in range(bridge_platform.MAX_CONNECTIONS)]
        for _, platform in clients:
            await platform.getStorageUsage()  # each is served
        extra, platform = await app_client(grain, schema)
        with pytest.raises(capnp.KjException):
            await asyncio.wait_for(platform.getStorageUsage(), 10)
        extra.close()
        for client, _ in clients:
            client.close()


def test_the_bridge_run_as_a_script_loads_its_platform_module_from_beside_it() -> None:
    """Inside a grain the bridge may run as a script (-I -S: no site-packages, its directory
    not on sys.path): bridge_platform then comes from the file next to it."""
    from grainhouse_grainmgr import bridge

    done = subprocess.run(
        [sys.executable, "-I", "-S", "-B", bridge.__file__],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr  # got as far as reading its (missing) config
    assert "no valid GRAINHOUSE_BRIDGE configuration" in done.stdout


async def test_a_grain_calling_too_fast_is_refused_not_queued(tmp_path: Path) -> None:
    async with wired(tmp_path) as (grain, schema):
        client, platform = await app_client(grain, schema)
        refused: list[int] = []
        for i in range(grain_platform.CALLS_BURST * 2):
            try:
                await platform.getStorageUsage()
            except capnp.KjException as exc:
                assert "too many calls" in str(exc)
                refused.append(i)
        assert refused, "200 calls in a row all went through"
        assert refused[0] >= grain_platform.CALLS_BURST - 1  # the burst itself is served
        assert grain.measures == 1  # however often it was asked
        client.close()


async def test_garbage_on_the_apps_socket_costs_only_that_connection(tmp_path: Path) -> None:
    async with wired(tmp_path) as (grain, schema):
        loop = asyncio.get_running_loop()
        for junk in (b"\xff" * 64, b"\x00\x00\x00\x00\xff\xff\xff\x7f" + b"A" * 4096):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
                bad.setblocking(False)
                await loop.sock_connect(bad, "\0" + grain.name)
                await loop.sock_sendall(bad, junk)

                # The bridge ends that connection (perhaps after an abort message): EOF.
                async def until_eof(sock: socket.socket = bad) -> None:
                    while await loop.sock_recv(sock, 4096):
                        pass

                await asyncio.wait_for(until_eof(), 10)
        client, platform = await app_client(grain, schema)
        assert (await platform.getStorageUsage()).quotaBytes == 2048  # still serving
        client.close()
