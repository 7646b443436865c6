"""`python -m grainhouse_grainmgr`: wiring only (settings, launcher, runtime, servicers).

The launcher (fork server) must start before any thread, event loop or gRPC server
exists in this process: forking a process that runs gRPC threads is unsupported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from pathlib import Path

import capnp

from grainhouse_common import runtime, settings
from grainhouse_grainmgr import control
from grainhouse_grainmgr.authlink import AuthLink
from grainhouse_grainmgr.grains import RUNTIME_INSIDE, Grains, LifecycleSettings
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, SandboxError
from grainhouse_grainmgr.packages import Packages
from grainhouse_grainmgr.relay import Relay
from grainhouse_grainmgr.service import GrainManagerService, register
from grainhouse_grainmgr.settings import GrainmgrSettings
from grainhouse_grainmgr.store import Store
from grainhouse_grainmgr.transfers import Snapshots
from grainhouse_grainmgr.upkeep import Upkeep

log = logging.getLogger("grainhouse.grainmgr")


def grain_runtime_paths() -> tuple[tuple[str, str], ...]:
    """(host, inside) read-only mounts every grain gets: the bridge, grain.capnp, pycapnp.

    Fixed places inside (grains.RUNTIME_INSIDE), whatever the checkout's location: a host
    path under /tmp would otherwise be hidden by the grain's private /tmp.
    """
    inside = RUNTIME_INSIDE
    return (
        (str(Path(__file__).resolve().parent), inside["bridge"]),  # bridge.py, run as a script
        (str(control.schema_path().parent), inside["proto"]),  # grain.capnp
        (os.path.dirname(os.path.abspath(capnp.__file__)), inside["capnp"]),  # pycapnp alone
    )


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(GrainmgrSettings)
    root = (common.data_dir / "grainmgr").resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    # One cgroup subtree per data dir: two grainmgrs on one machine (tests) must not clean
    # up each other's grains as "stale".
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    try:
        launcher = Launcher.start(
            LauncherSettings(
                allowed_roots=(str(root),),
                cgroup_name=f"grainhouse-{tag}",
                extra_ro=grain_runtime_paths(),
            )
        )
    except SandboxError as exc:
        print(f"grainmgr: cannot start the sandbox launcher: {exc.message}", flush=True)
        return 1
    rt = runtime.make_runtime(
        "grainmgr", common, own.database_url.get_secret_value(), "grainhouse_grainmgr.migrations"
    )
    try:
        return asyncio.run(serve(rt, own, root, launcher))
    finally:
        launcher.close()


async def serve(rt: runtime.Runtime, own: GrainmgrSettings, root: Path, launcher: Launcher) -> int:
    async with capnp.kj_loop():
        assert rt.db is not None
        store = Store(rt.db.pool)
        packages = Packages(store, root, own.max_package_bytes)
        lifecycle = LifecycleSettings(
            idle_stop_seconds=own.idle_stop_seconds,
            trash_retention_seconds=own.trash_retention_seconds,
            start_timeout_seconds=own.start_timeout_seconds,
            stop_grace_seconds=own.stop_grace_seconds,
            max_running=own.max_running_grains,
            memory_bytes=own.grain_memory_bytes,
            var_quota_bytes=own.grain_var_quota_bytes,
            bridge_python=own.bridge_python,
            ping_interval_seconds=own.ping_interval_seconds,
            capnp_package=RUNTIME_INSIDE["capnp"],
        )
        auth = AuthLink(rt.common.auth_addr) if own.register_with_auth else None
        grains = Grains(store, packages, launcher, rt.bus, root, lifecycle, auth)
        snaps = Snapshots(grains, root)
        relay = Relay(grains.keys, grains.connect_stream)
        service = GrainManagerService(packages, grains, snaps, relay, own.relay_advertise)
        tasks: list[asyncio.Task[None]] = []

        upkeep = Upkeep(grains)

        async def housekeeping() -> None:
            while True:
                await asyncio.sleep(own.housekeeping_interval_seconds)
                try:
                    await upkeep.round()
                except Exception:
                    log.exception("housekeeping failed")

        async def on_ready() -> None:
            await grains.recover_after_restart()
            address = await relay.start(own.relay_listen, own.relay_socket)
            log.info("relay listening", extra={"relay": address, "socket": relay.socket_path})
            tasks.append(asyncio.create_task(housekeeping()))

        async def on_stop() -> None:
            for task in tasks:
                task.cancel()
            await grains.stop_all()
            await relay.close()
            if auth is not None:
                with contextlib.suppress(Exception):
                    await auth.close()

        code: int = await runtime.serve_grpc(
            rt,
            own.listen,
            own.metrics_listen,
            lambda server, _rt: register(server, service),
            on_ready=on_ready,
            on_stop=on_stop,
        )
        return code


if __name__ == "__main__":
    raise SystemExit(main())
