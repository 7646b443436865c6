"""`python -m grainhouse_backup`: wiring only (settings, runtime, storage, servicer, jobs)."""

from __future__ import annotations

import asyncio
import contextlib

from grainhouse_backup import metrics, service, storage
from grainhouse_backup.backups import Config, Engine
from grainhouse_backup.events import Events
from grainhouse_backup.jobs import Jobs
from grainhouse_backup.settings import BackupSettings
from grainhouse_backup.store import Store
from grainhouse_backup.verdicts import Limits
from grainhouse_common import rpc, runtime, settings
from grainhouse_proto import grainmgr_pb2_grpc


def open_storage(common: settings.CommonSettings, own: BackupSettings) -> storage.LocalStorage:
    root = own.storage_dir or common.data_dir / "backup"
    key = None
    if own.encryption_key_file is not None:
        key = storage.key_from_file(own.encryption_key_file)
    elif own.encryption_passphrase is not None:
        key = storage.key_from_passphrase(own.encryption_passphrase.get_secret_value(), root)
    return storage.LocalStorage(root, key)


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(BackupSettings)
    rt = runtime.make_runtime(
        "backup", common, own.database_url.get_secret_value(), "grainhouse_backup.migrations"
    )
    try:
        store_dir = open_storage(common, own)
    except (storage.StorageError, OSError) as exc:
        rt.log.error("cannot open backup storage: %s", exc)
        return 2
    store_dir.clean_tmp()  # leftovers of a run that died: never a partial backup
    config = Config(
        limits=Limits(
            max_total_bytes=own.max_total_bytes,
            max_ratio=own.max_ratio,
            max_files=own.max_files,
            max_memory_bytes=own.validator_memory_bytes,
        ),
        compress_level=own.compress_level,
        validator_timeout=own.validator_timeout_seconds,
        max_archive_bytes=own.max_archive_bytes,
        max_tasks_per_owner=own.max_tasks_per_owner,
    )
    assert rt.db is not None
    store = Store(rt.db.pool)
    # Made by `register` (the runtime calls it with the server), used by `on_ready` after it.
    wired: list[tuple[Engine, grainmgr_pb2_grpc.GrainManagerStub]] = []
    background: list[asyncio.Task[None]] = []

    def register(server: object, rt: runtime.Runtime) -> None:
        grainmgr = grainmgr_pb2_grpc.GrainManagerStub(rpc.channel(common.grainmgr_addr))
        engine = Engine(store, store_dir, grainmgr, config, Events(rt.bus).publish)
        wired.append((engine, grainmgr))
        svc = service.BackupService(
            store, engine, grainmgr, period_override=own.schedule_period_override_seconds
        )
        service.register(server, svc)

    async def on_ready() -> None:
        await store.fail_orphans()
        available, capacity = store_dir.usage()
        metrics.STORAGE_AVAILABLE.set(available)
        metrics.STORAGE_CAPACITY.set(capacity)
        engine, grainmgr = wired[-1]
        jobs = Jobs(
            rt.bus.nc,
            store,
            engine,
            grainmgr,
            interval=own.scheduler_interval_seconds,
            ack_wait=own.job_ack_wait_seconds,
            max_deliver=own.job_max_deliver,
            period_override=own.schedule_period_override_seconds,
        )
        await jobs.setup()
        background.append(asyncio.create_task(jobs.scheduler(rt.stop)))
        background.append(asyncio.create_task(jobs.worker(rt.stop)))

    async def on_stop() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    code: int = asyncio.run(
        runtime.serve_grpc(rt, own.listen, own.metrics_listen, register, on_ready, on_stop)
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
