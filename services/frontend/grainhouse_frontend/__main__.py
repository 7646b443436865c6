"""`python -m grainhouse_frontend`: wiring only (settings, runtime, HTTP server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
import uvloop

from grainhouse_common import metrics, rpc, runtime, settings
from grainhouse_frontend import api, grain_door, grain_events, identity, kvstore, revocations
from grainhouse_frontend import app as appmod
from grainhouse_frontend.grain_proxy import GrainProxy
from grainhouse_frontend.origins import Origins
from grainhouse_frontend.pages import Ui, UiDeps
from grainhouse_frontend.settings import FrontendSettings
from grainhouse_frontend.web_session import CookieNames, Sessions
from grainhouse_proto import auth_pb2_grpc, backup_pb2_grpc, grainmgr_pb2_grpc


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(common: settings.CommonSettings, own: FrontendSettings) -> int:
    rt = runtime.make_runtime("frontend", common, None, None)
    runtime.install_signals(rt.stop)
    listener = metrics.serve("frontend", own.metrics_listen)
    peers = {"auth": common.auth_addr, "grainmgr": common.grainmgr_addr}
    status: dict[str, bool] = {"nats": False, **{name: False for name in peers}}

    async def monitor() -> None:
        while not rt.stop.is_set():
            status["nats"] = rt.bus.connected
            for name, addr in peers.items():
                status[name] = await rpc.check_health(addr, timeout=1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), 1.0)

    async def health() -> dict[str, bool]:
        return dict(status)

    auth_channel = rpc.channel(common.auth_addr)
    grainmgr_channel = rpc.channel(common.grainmgr_addr)
    auth = auth_pb2_grpc.AuthStub(auth_channel)
    grainmgr = grainmgr_pb2_grpc.GrainManagerStub(grainmgr_channel)
    ident = identity.Identity(auth)
    public_url = common.public_url.rstrip("/")
    origins = Origins(common.wildcard_host)
    store = kvstore.SwitchableStore()
    all_peers = {**peers, "backup": common.backup_addr}
    backup_channel = rpc.channel(common.backup_addr)
    backup = backup_pb2_grpc.BackupStub(backup_channel)
    deps = api.Deps(ident, grainmgr, all_peers, auth, origins, public_url, store, backup)
    names = CookieNames.for_url(public_url)
    ui = Ui(
        UiDeps(
            auth,
            grainmgr,
            Sessions(auth, names),
            origins,
            public_url,
            common.wildcard_host,
            [p.strip() for p in own.oidc_providers.split(",") if p.strip()],
            all_peers,
            backup,
        )
    )
    grains = GrainProxy(origins, auth, grainmgr, public_url, names.all())

    async def connect_bus() -> None:
        if await rt.bus.connect(rt.stop):
            assert rt.bus.nc is not None
            await rt.bus.subscribe(revocations.SUBJECT, revocations.handler(ident, origins))
            await rt.bus.subscribe(grain_events.SUBJECT, grain_events.handler(origins))
            shared = await kvstore.NatsStore.open(rt.bus.nc)
            if shared is not None:
                store.inner = shared

    host, port = metrics.split_addr(own.listen)
    app = appmod.build(health, deps, ui, grains)
    # Plain grain requests are served by grain_door's protocol, the rest by uvicorn's own.
    http: Any = grain_door.protocol_class(app) if isinstance(app, appmod.HostSplit) else "auto"
    config = uvicorn.Config(
        app,
        http=http,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(common.shutdown_grace_seconds),
        h11_max_incomplete_event_size=own.max_request_line_bytes,
        # X-Forwarded-* only from the configured proxies (uvicorn would trust 127.0.0.1 by
        # default: any local client could pick its own guess-limit address).
        proxy_headers=bool(own.trusted_proxies),
        forwarded_allow_ips=own.trusted_proxies.split(",") if own.trusted_proxies else [],
    )
    server = _Server(config)
    connector = asyncio.create_task(connect_bus())
    watcher = asyncio.create_task(monitor())
    serving = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(rt.stop.wait())
    await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    rt.log.info("stopping")
    server.should_exit = True
    await serving
    rt.stop.set()
    for task in (connector, watcher, stopper):
        task.cancel()
    grains.close()
    await rt.bus.close()
    await auth_channel.close()
    await grainmgr_channel.close()
    await backup_channel.close()
    listener.close()
    rt.log.info("stopped")
    return 0 if server.started else 1


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(FrontendSettings)
    # uvloop (from uvicorn[standard]): ~15% less CPU per proxied grain request than stock
    # asyncio. Safe here: the frontend runs no Cap'n Proto server (ARCHITECTURE §3).
    return uvloop.run(serve(common, own))


if __name__ == "__main__":
    raise SystemExit(main())
