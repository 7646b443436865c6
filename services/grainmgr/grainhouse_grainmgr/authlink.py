"""grainmgr's calls to auth: RegisterGrain when a grain appears, ForgetGrain when it is gone.

Owns: the gRPC channel to auth.
Trusts: auth's answers.
Never: sends grain contents; asks auth for an access decision (the frontend does that).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from grainhouse_common import rpc
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2, auth_pb2_grpc, common_pb2

log = logging.getLogger("grainhouse.grainmgr.auth")
TIMEOUT = 5.0


def view_info_pb(info: dict[str, Any]) -> common_pb2.ViewInfo:
    return common_pb2.ViewInfo(
        permissions=[
            common_pb2.PermissionDef(
                name=p["name"], title=p["title"], description=p.get("description", "")
            )
            for p in info.get("permissions", [])
        ],
        roles=[
            common_pb2.RoleDef(
                name=r["name"],
                title=r["title"],
                verb_phrase=r.get("verbPhrase", ""),
                permissions=list(r.get("permissions", [])),
                is_default=bool(r.get("isDefault", False)),
                obsolete=bool(r.get("obsolete", False)),
            )
            for r in info.get("roles", [])
        ],
    )


class AuthLink:
    def __init__(self, addr: str) -> None:
        self.channel = rpc.channel(addr)
        self.stub = auth_pb2_grpc.AuthStub(self.channel)

    async def register(
        self, grain_id: str, owner: str, app_id: str, info: dict[str, Any], title: str
    ) -> None:
        request = auth_pb2.RegisterGrainRequest(
            grain_id=grain_id,
            owner_account_id=owner,
            app_id=app_id,
            view_info=view_info_pb(info),
            title=title,
        )
        await self._call(self.stub.RegisterGrain, request, "RegisterGrain")

    async def forget(self, grain_id: str) -> None:
        request = auth_pb2.ForgetGrainRequest(grain_id=grain_id)
        try:
            await self._call(self.stub.ForgetGrain, request, "ForgetGrain")
        except GrainhouseError as exc:
            # The grain is gone already; auth drops stale grants when it next hears of it.
            log.warning("auth.ForgetGrain failed for %s: %s", grain_id, exc)

    async def _call(self, method: Any, request: Any, name: str) -> None:
        try:
            await method(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                # An auth without grain registration (older build): nothing to tell it.
                log.warning("auth does not implement %s; continuing without it", name)
                return
            if code == grpc.StatusCode.NOT_FOUND:
                raise GrainhouseError(Kind.NOT_FOUND, "the owner account is unknown") from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise GrainhouseError(Kind.INVALID, "auth refused the grain's details") from exc
            raise GrainhouseError(Kind.UNAVAILABLE, "auth cannot be reached; retry") from exc

    async def close(self) -> None:
        await self.channel.close()
