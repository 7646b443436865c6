"""Who is calling the REST API: a bearer token checked by auth, cached briefly.

Owns: the frontend's short-lived cache of auth's answers, keyed by a hash of the secret
(never the secret), and its invalidation on auth's revocation events.
Trusts: auth's AuthenticateToken answers; nothing the client says about itself.
Never: judges a credential itself, stores a secret, or forwards one anywhere but to auth.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.requests import Request

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2, auth_pb2_grpc

MAX_CACHE = 10_000
_SCOPE_NAMES = {
    auth_pb2.SCOPE_READ: "read",
    auth_pb2.SCOPE_WRITE: "write",
    auth_pb2.SCOPE_ADMIN: "admin",
}


@dataclass(frozen=True)
class Caller:
    account_id: str
    credential_id: str
    scope: str
    is_admin: bool
    secret: str  # kept only for the life of the request, to pass on to auth

    def public(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "credential_id": self.credential_id,
            "scope": self.scope,
            "is_admin": self.is_admin,
        }


class Identity:
    def __init__(self, auth: auth_pb2_grpc.AuthStub) -> None:
        self.auth = auth
        # hash of secret -> (expires_at monotonic, caller without the secret)
        self._cache: dict[bytes, tuple[float, Caller]] = {}

    def forget_credentials(self, credential_ids: set[str]) -> int:
        """Drop cached answers for revoked credentials (called on auth's NATS event)."""
        doomed = [k for k, (_, c) in self._cache.items() if c.credential_id in credential_ids]
        for key in doomed:
            del self._cache[key]
        return len(doomed)

    def forget_account(self, account_id: str) -> None:
        for key in [k for k, (_, c) in self._cache.items() if c.account_id == account_id]:
            del self._cache[key]

    async def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise GrainhouseError(
                Kind.UNAUTHENTICATED, "send an API token: Authorization: Bearer <token>"
            )
        secret = secret.strip()
        key = hashlib.sha256(secret.encode()).digest()
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            cached = hit[1]
            return Caller(
                cached.account_id, cached.credential_id, cached.scope, cached.is_admin, secret
            )
        try:
            reply = await self.auth.AuthenticateToken(
                auth_pb2.AuthenticateTokenRequest(bearer_secret=secret), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise GrainhouseError(Kind.UNAUTHENTICATED, "invalid or expired token") from None
            raise
        p = reply.principal
        caller = Caller(
            p.account_id, p.credential_id, _SCOPE_NAMES.get(p.scope, "none"), p.is_admin, ""
        )
        if reply.cache_ttl_seconds and len(self._cache) < MAX_CACHE:
            self._cache[key] = (now + min(reply.cache_ttl_seconds, 60), caller)
        return Caller(
            caller.account_id, caller.credential_id, caller.scope, caller.is_admin, secret
        )
