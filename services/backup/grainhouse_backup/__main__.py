"""`python -m grainhouse_backup`: wiring only (settings, runtime, servicers)."""

from __future__ import annotations

import asyncio

from grainhouse_backup.settings import BackupSettings
from grainhouse_common import runtime, settings


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(BackupSettings)
    rt = runtime.make_runtime(
        "backup", common, own.database_url.get_secret_value(), "grainhouse_backup.migrations"
    )

    def register(server: object, rt: runtime.Runtime) -> None:
        # The Backup servicer arrives with the backup issue; until then only health runs.
        pass

    return asyncio.run(runtime.serve_grpc(rt, own.listen, own.metrics_listen, register))


if __name__ == "__main__":
    raise SystemExit(main())
