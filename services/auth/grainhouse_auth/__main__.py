"""`python -m grainhouse_auth`: wiring only (settings, runtime, servicer)."""

from __future__ import annotations

import asyncio
import sys

from grainhouse_auth import oidc, operator_key, tokens
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

    async def on_ready() -> None:
        assert rt.db is not None
        await tokens.ensure_operator_account(rt.db.pool)

    return asyncio.run(runtime.serve_grpc(rt, own.listen, own.metrics_listen, register, on_ready))


if __name__ == "__main__":
    raise SystemExit(main())
