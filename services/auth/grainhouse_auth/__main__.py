"""`python -m grainhouse_auth`: wiring only (settings, runtime, servicer)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grainhouse_auth import housekeeping, oidc, operator_key, tokens
from grainhouse_auth.service import AuthServicer
from grainhouse_auth.settings import AuthSettings
from grainhouse_common import runtime, settings
from grainhouse_proto import auth_pb2_grpc


def main() -> int:
    common = settings.load_or_exit(settings.CommonSettings)
    own = settings.load_or_exit(AuthSettings)
    try:
        oidc.parse_providers(own.oidc_providers.get_secret_value())
    except ValueError as exc:
        print(f"grainhouse: {exc}", file=sys.stderr)
        return 2
    key_file = own.operator_key_file or common.data_dir / "auth" / "operator.key"
    key = operator_key.load_or_create(key_file)
    rt = runtime.make_runtime(
        "auth", common, own.database_url.get_secret_value(), "grainhouse_auth.migrations"
    )

    def register(server: object, rt: runtime.Runtime) -> None:
        auth_pb2_grpc.add_AuthServicer_to_server(AuthServicer(rt, own, key), server)

    background: list[asyncio.Task[Any]] = []
    cleanup = housekeeping.Policy(
        grace_seconds=own.housekeeping_grace_seconds,
        rate_limit_forget_seconds=own.login_block_seconds,
        batch=own.housekeeping_batch_rows,
    )

    async def on_ready() -> None:
        assert rt.db is not None
        await tokens.ensure_operator_account(rt.db.pool)
        background.append(
            asyncio.create_task(
                housekeeping.run_forever(
                    rt.db.pool, cleanup, own.housekeeping_interval_seconds, rt.stop
                )
            )
        )

    async def on_stop() -> None:
        for task in background:
            task.cancel()

    return asyncio.run(
        runtime.serve_grpc(rt, own.listen, own.metrics_listen, register, on_ready, on_stop)
    )


if __name__ == "__main__":
    raise SystemExit(main())
