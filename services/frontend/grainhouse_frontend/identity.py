"""Who is calling the REST API: a bearer token checked by auth, cached briefly.

Owns: the frontend's short-lived cache of auth's answers, keyed by a hash of the secret
(never the secret), and its invalidation on auth's revocation events.
Trusts: auth's AuthenticateToken answers; nothing the client says about itself.
Never: judges a credential itself, stores a secret, or forwards one anywhere but to auth.

Guess limits are auth's (auth.proto client_address): every AuthenticateToken call carries the
client's address, and an address that auth makes wait gets 429 with Retry-After. Because a
cached answer never reaches auth, the frontend also remembers for how long auth said an address
must wait and refuses that address's requests itself until then, cached token or not (so a
guesser's stolen-but-valid token gets no way around the block).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.requests import Request

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_proto import auth_pb2, auth_pb2_grpc

MAX_CACHE = 10_000
_WAIT = re.compile(r"try again in (\d{1,6}) s")
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
    # Auth's answer (Account.can_create_grains): false for visitors and grain API tokens.
    can_create_grains: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "credential_id": self.credential_id,
            "scope": self.scope,
            "is_admin": self.is_admin,
            "can_create_grains": self.can_create_grains,
        }

    def with_secret(self, secret: str) -> Caller:
        return Caller(
            self.account_id,
            self.credential_id,
            self.scope,
            self.is_admin,
            secret,
            self.can_create_grains,
        )

    def require_grain_creation(self) -> None:
        """PERMISSION unless auth said this account may create grains (not a visitor)."""
        if not self.can_create_grains:
            raise GrainhouseError(
                Kind.PERMISSION,
                "this account may open what is shared with it but cannot create grains: "
                "ask an admin for an invitation",
            )


class Identity:
    def __init__(self, auth: auth_pb2_grpc.AuthStub) -> None:
        self.auth = auth
        # hash of secret -> (expires_at monotonic, caller without the secret)
        self._cache: dict[bytes, tuple[float, Caller]] = {}
        # client address -> monotonic time until which auth refuses it (guess limits)
        self._waiting: dict[str, float] = {}

    def _refuse_if_waiting(self, address: str, now: float) -> None:
        until = self._waiting.get(address)
        if until is None:
            return
        if until <= now:
            del self._waiting[address]
            return
        raise GrainhouseError(
            Kind.OVERLOADED, f"too many attempts: try again in {math.ceil(until - now)} s"
        )

    def _remember_wait(self, address: str, details: str, now: float) -> None:
        found = _WAIT.search(details)
        if not address or found is None:
            return
        if len(self._waiting) >= MAX_CACHE:
            self._waiting = {a: t for a, t in self._waiting.items() if t > now}
            if len(self._waiting) >= MAX_CACHE:
                return  # auth still refuses them; this is only the cached-token shortcut
        self._waiting[address] = now + int(found.group(1))

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
        address = client_address(request)
        self._refuse_if_waiting(address, now)
        if hit is not None and hit[0] > now:
            return hit[1].with_secret(secret)
        try:
            reply = await self.auth.AuthenticateToken(
                auth_pb2.AuthenticateTokenRequest(bearer_secret=secret, client_address=address),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise GrainhouseError(Kind.UNAUTHENTICATED, "invalid or expired token") from None
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._remember_wait(address, exc.details() or "", now)
            raise
        p = reply.principal
        caller = Caller(
            p.account_id,
            p.credential_id,
            _SCOPE_NAMES.get(p.scope, "none"),
            p.is_admin,
            "",
            reply.HasField("account") and reply.account.can_create_grains,
        )
        if reply.cache_ttl_seconds and len(self._cache) < MAX_CACHE:
            self._cache[key] = (now + min(reply.cache_ttl_seconds, 60), caller)
        return caller.with_secret(secret)


def wait_seconds(details: str) -> int:
    """The wait auth named in a RESOURCE_EXHAUSTED message ("… try again in N s"); 1 if none."""
    found = _WAIT.search(details)
    return max(1, int(found.group(1))) if found else 1


def client_address(request: Request) -> str:
    """The client's address for auth's guess limits (auth.proto client_address)."""
    # Already the forwarded client's when the peer is a trusted proxy (uvicorn's proxy headers
    # middleware, configured from the frontend's trusted_proxies setting).
    return request.client.host if request.client else ""
