"""Operator commands that run on the server's machine: they read the data directory.

Owns: nothing; it reads `<data>/run/state.json` (where the services are) and
`<data>/auth/operator.key` (proof of operator power) and asks auth over gRPC.
Trusts: the data directory (whoever can read it controls the server anyway).
Never: prints the operator key.
"""

from __future__ import annotations

import asyncio

import grpc

from grainhouse_cli.datadir import DataDir
from grainhouse_common import rpc
from grainhouse_proto import auth_pb2, auth_pb2_grpc


class AdminError(Exception):
    """One readable line."""


def _auth_addr(data: DataDir) -> tuple[str, str]:
    state = data.read_state()
    if not data.is_locked() or state is None:
        raise AdminError(
            f"Grainhouse is not running on {data.root} (start it with `grainhouse up`)"
        )
    try:
        return state["services"]["auth"]["grpc"], state["url"]
    except (KeyError, TypeError):
        raise AdminError(
            f"state file {data.state_file} is incomplete; restart Grainhouse"
        ) from None


def operator_key(data: DataDir) -> str:
    path = data.root / "auth" / "operator.key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminError(f"cannot read the operator key {path}: {exc.strerror}") from None


def issue_admin_token(data: DataDir, name: str) -> tuple[str, str]:
    addr, url = _auth_addr(data)
    key = operator_key(data)

    async def call() -> str:
        async with rpc.channel(addr) as ch:
            stub = auth_pb2_grpc.AuthStub(ch)
            reply = await stub.IssueAdminToken(
                auth_pb2.IssueAdminTokenRequest(
                    operator_key=auth_pb2.OperatorKey(key_secret=key), name=name
                ),
                timeout=10,
            )
            return str(reply.token_secret)

    try:
        return url, asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        raise AdminError(f"auth refused: {exc.details()} ({exc.code().name})") from None
