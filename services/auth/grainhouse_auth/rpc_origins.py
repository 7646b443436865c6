"""Auth RPCs for grain origins: CreateOrigin and ResolveOrigin (auth.proto "Grain origins").

Owns: decoding these requests and encoding their results; the rule that a refused decision
closes the origin for good.
Trusts: origins.py for the records, sharing.py (through SharingRpcs._decision) for every
decision, ratelimit.guarded for the per-address guess limits.
Never: returns an origin id except in the CreateOrigin answer that makes it; logs one.
"""

from __future__ import annotations

from grainhouse_auth import origins, principals, ratelimit
from grainhouse_auth.rpc_sharing import SharingRpcs
from grainhouse_auth.service_base import Ctx
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2

_TYPE_TO_DB = {
    auth_pb2.ORIGIN_SESSION_TYPE_UNSPECIFIED: "normal",
    auth_pb2.ORIGIN_SESSION_TYPE_NORMAL: "normal",
    auth_pb2.ORIGIN_SESSION_TYPE_API: "api",
}
_TYPE_TO_PB = {
    "normal": auth_pb2.ORIGIN_SESSION_TYPE_NORMAL,
    "api": auth_pb2.ORIGIN_SESSION_TYPE_API,
}


class OriginRpcs(SharingRpcs):
    async def CreateOrigin(
        self, request: auth_pb2.CreateOriginRequest, context: Ctx
    ) -> auth_pb2.CreateOriginResponse:
        if request.credential.WhichOneof("secret") is None or not request.grain_id:
            raise GrainhouseError(Kind.INVALID, "credential and grain_id are required")
        session_type = _TYPE_TO_DB.get(request.session_type)
        if session_type is None:
            raise GrainhouseError(Kind.INVALID, "session_type: unknown value")
        tab_id = origins.check_tab_id(request.tab_id)
        p = await self._guarded_caller(request.credential, request.client_address)
        decision = await self.sharing.decide(p, request.grain_id)
        if not decision.allowed:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain, or not yours to open")
        idle = self.settings.origin_idle_seconds
        async with self.pool.connection() as conn:
            origin_id, _ = await origins.create(
                conn, p, request.grain_id, tab_id, session_type, idle
            )
        return auth_pb2.CreateOriginResponse(origin_id=origin_id, tab_id=tab_id, idle_seconds=idle)

    async def ResolveOrigin(
        self, request: auth_pb2.ResolveOriginRequest, context: Ctx
    ) -> auth_pb2.ResolveOriginResponse:
        origin_id = origins.check_origin_id(request.origin_id)
        idle = self.settings.origin_idle_seconds

        async def find() -> origins.Origin:
            async with self.pool.connection() as conn:
                found = await origins.touch(conn, origin_id, idle)
            if found is None:
                raise GrainhouseError(Kind.NOT_FOUND, origins.GONE)
            return found

        # An id never issued is a guess at a 128-bit secret; an ended one still kept is not.
        origin = await ratelimit.guarded(
            self.pool,
            request.client_address,
            self.limits,
            find,
            counts=(Kind.NOT_FOUND,),
            stale=lambda conn: origins.was_issued(conn, origin_id),
        )
        resp = auth_pb2.ResolveOriginResponse(
            grain_id=origin.grain_id,
            tab_id=origin.tab_id,
            session_type=_TYPE_TO_PB[origin.session_type],
            idle_seconds=idle,
        )
        ttl = self.settings.authorize_cache_seconds
        try:
            async with self.pool.connection() as conn:
                p = await origins.principal_of(conn, origin.credential_kind, origin.credential_id)
        except principals.AccountDisabledError:
            resp.decision.CopyFrom(
                auth_pb2.AuthorizeResponse(
                    deny_reason=auth_pb2.DENY_REASON_ACCOUNT_DISABLED, cache_ttl_seconds=ttl
                )
            )
        except GrainhouseError as exc:
            if exc.kind is not Kind.UNAUTHENTICATED:
                raise
            resp.decision.CopyFrom(
                auth_pb2.AuthorizeResponse(
                    deny_reason=auth_pb2.DENY_REASON_UNAUTHENTICATED, cache_ttl_seconds=ttl
                )
            )
        else:
            resp.decision.CopyFrom(await self._decision(p, origin.grain_id))
        if not resp.decision.allowed:
            async with self.pool.connection() as conn:
                await origins.close(conn, origin_id)
        return resp
