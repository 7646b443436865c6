"""A service process's life: start, report health, survive outages, stop gracefully.

Owns: the process-wide stop event, signal handling, the health monitor loop, and the
order of start and shutdown of a service's parts.
Trusts: its settings (already validated).
Never: exits because a dependency (PostgreSQL, NATS) is down: it reports NOT_SERVING
and keeps retrying.

Start: logging -> parent-death signal -> /metrics -> listener (NOT_SERVING) -> database
(migrations) and NATS, with backoff -> SERVING. SIGTERM/SIGINT: NOT_SERVING, stop
accepting, let in-flight calls finish within the grace period, close NATS and the pool,
exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from grainhouse_common import log as logsetup
from grainhouse_common import metrics as metricsmod
from grainhouse_common import rpc
from grainhouse_common.bus import Bus
from grainhouse_common.db import Database
from grainhouse_common.settings import CommonSettings

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies, so no service is orphaned."""
    if parent_pid <= 0:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        raise SystemExit(0)


@dataclass
class Runtime:
    """What a service's handlers may lean on: settings, database, bus, stop event."""

    name: str
    common: CommonSettings
    db: Database | None
    bus: Bus
    deps_metrics: metricsmod.DependencyMetrics
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("grainhouse"))
    extra_checks: list[Callable[[], Awaitable[bool]]] = field(default_factory=list)

    async def healthy(self) -> bool:
        if not self.ready.is_set() or not self.bus.connected:
            return False
        if self.db is not None and not await self.db.healthy():
            return False
        for check in self.extra_checks:
            if not await check():
                return False
        return True


def install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _connect(rt: Runtime, on_ready: Callable[[], Awaitable[None]] | None) -> None:
    if rt.db is not None and not await rt.db.start(rt.stop):
        return
    if not await rt.bus.connect(rt.stop):
        return
    if on_ready is not None:
        await on_ready()
    rt.ready.set()
    rt.log.info("dependencies ready")


def make_runtime(
    name: str, common: CommonSettings, database_url: str | None, migrations: str | None
) -> Runtime:
    logger = logsetup.configure(name, common.log_level)
    die_with_parent(common.supervisor_pid)
    deps = metricsmod.dependency_metrics(name)
    db = Database(database_url, name, migrations, deps) if database_url else None
    bus = Bus(common.nats_url, f"grainhouse-{name}", deps)
    return Runtime(name=name, common=common, db=db, bus=bus, deps_metrics=deps, log=logger)


async def serve_grpc(
    rt: Runtime,
    listen: str,
    metrics_listen: str,
    register: Callable[[object, Runtime], None],
    on_ready: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Run a gRPC service until SIGTERM; returns the exit code (0 on a clean stop)."""
    install_signals(rt.stop)
    listener = metricsmod.serve(rt.name, metrics_listen)
    server, health = rpc.server(metricsmod.rpc_metrics(rt.name))
    register(server, rt)
    port = server.add_insecure_port(listen)
    if port == 0:
        rt.log.error("cannot listen on %s", listen)
        return 1
    await health.set("", rpc.NOT_SERVING)
    await server.start()
    rt.log.info(
        "listening",
        extra={"grpc": f"{listen.rsplit(':', 1)[0]}:{port}", "metrics_port": listener.port},
    )
    connector = asyncio.create_task(_connect(rt, on_ready))
    status = None
    while not rt.stop.is_set():
        ok = await rt.healthy()
        if ok != status:
            await health.set("", rpc.SERVING if ok else rpc.NOT_SERVING)
            rt.log.info("health %s", "SERVING" if ok else "NOT_SERVING")
            status = ok
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), 1.0)
    rt.log.info("stopping")
    await health.enter_graceful_shutdown()
    await server.stop(rt.common.shutdown_grace_seconds)
    connector.cancel()
    if on_stop is not None:
        await on_stop()
    await rt.bus.close()
    if rt.db is not None:
        await rt.db.close()
    listener.close()
    rt.log.info("stopped")
    return 0
