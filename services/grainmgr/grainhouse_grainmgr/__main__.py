"""`python -m grainhouse_grainmgr`: wiring only (settings, launcher, runtime, servicers).

The launcher (fork server) must start before any thread, event loop or gRPC server
exists in this process: forking a process that runs gRPC threads is unsupported.
"""

from __future__ import annotations

import asyncio

from grainhouse_common import runtime, settings
from grainhouse_grainmgr.settings import GrainmgrSettings


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(GrainmgrSettings)
    rt = runtime.make_runtime(
        "grainmgr", common, own.database_url.get_secret_value(), "grainhouse_grainmgr.migrations"
    )

    def register(server: object, rt: runtime.Runtime) -> None:
        # The GrainManager servicer arrives with the apps and grains issues.
        pass

    return asyncio.run(runtime.serve_grpc(rt, own.listen, own.metrics_listen, register))


if __name__ == "__main__":
    raise SystemExit(main())
