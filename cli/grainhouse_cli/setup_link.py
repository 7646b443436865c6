"""`grainhouse admin setup-link`: a one-time link that makes whoever opens it the admin.

Owns: nothing; it reads `<data>/run/state.json` (where auth listens, the platform URL) and
`<data>/auth/operator.key` (proof of operator power) and asks auth for a setup link.
Trusts: the data directory (whoever can read it controls the server anyway).
Never: prints the operator key; prints the link anywhere but stdout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import grpc

from grainhouse_cli.admin import AdminError, _auth_addr, operator_key
from grainhouse_cli.datadir import DataDir
from grainhouse_common import rpc
from grainhouse_proto import auth_pb2, auth_pb2_grpc


@dataclass(frozen=True)
class SetupLink:
    url: str
    expires_at: datetime


async def request(addr: str, key: str, base_url: str, ttl_seconds: int = 0) -> SetupLink:
    """The gRPC call itself (also used by `grainhouse up` on a fresh data directory)."""
    async with rpc.channel(addr) as ch:
        reply = await auth_pb2_grpc.AuthStub(ch).CreateSetupLink(
            auth_pb2.CreateSetupLinkRequest(
                operator_key=auth_pb2.OperatorKey(key_secret=key),
                ttl_seconds=ttl_seconds,
                base_url=base_url,
            ),
            timeout=10,
        )
        return SetupLink(str(reply.url), reply.expires_at.ToDatetime())


def create_setup_link(data: DataDir, ttl_seconds: int = 0) -> SetupLink:
    """Ask auth for a one-time admin setup link (0 = the server's default lifetime, 1 hour).

    Raises AdminError with one readable line when the platform is not running or auth refuses.
    """
    if ttl_seconds < 0:
        raise AdminError("the lifetime must be positive")
    addr, url = _auth_addr(data)
    key = operator_key(data)
    try:
        return asyncio.run(request(addr, key, url, ttl_seconds))
    except grpc.aio.AioRpcError as exc:
        raise AdminError(f"auth refused: {exc.details()} ({exc.code().name})") from None
