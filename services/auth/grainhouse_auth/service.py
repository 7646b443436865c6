"""The auth service's gRPC edge: decode, check the caller, call the core, encode.

Owns: the mapping between `grainhouse.auth.v1` messages and the core modules.
Trusts: nothing in a request: every credential is checked by the core.
Never: logs a secret or returns one except the single response that creates it.

RPCs not implemented yet answer UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grainhouse_auth import operator_key, tokens
from grainhouse_auth.settings import AuthSettings
from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_common.runtime import Runtime
from grainhouse_proto import auth_pb2, auth_pb2_grpc

_SCOPE_TO_PB = {
    "read": auth_pb2.SCOPE_READ,
    "write": auth_pb2.SCOPE_WRITE,
    "admin": auth_pb2.SCOPE_ADMIN,
}


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def token_to_pb(token: tokens.Token) -> auth_pb2.ApiToken:
    msg = auth_pb2.ApiToken(
        token_id=token.token_id,
        account_id=token.account_id,
        name=token.name,
        scopes=[_SCOPE_TO_PB[s] for s in token.scopes],
        secret_hint=token.secret_hint + "…",
    )
    msg.created_at.CopyFrom(_ts(token.created_at))
    msg.expires_at.CopyFrom(_ts(token.expires_at))
    if token.last_used_at is not None:
        msg.last_used_at.CopyFrom(_ts(token.last_used_at))
    return msg


class AuthServicer(auth_pb2_grpc.AuthServicer):
    def __init__(self, rt: Runtime, settings: AuthSettings, key: str) -> None:
        self.rt = rt
        self.settings = settings
        self.key = key

    @property
    def pool(self):  # type: ignore[no-untyped-def]
        assert self.rt.db is not None
        return self.rt.db.pool

    def _ttl(self, asked: int) -> int:
        if asked == 0:
            return self.settings.token_default_ttl_seconds
        if asked > self.settings.token_max_ttl_seconds:
            raise GrainhouseError(
                Kind.INVALID,
                f"ttl_seconds: at most {self.settings.token_max_ttl_seconds} "
                "(the server's maximum token lifetime)",
            )
        return asked

    async def IssueAdminToken(
        self, request: auth_pb2.IssueAdminTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.IssueAdminTokenResponse:
        if not operator_key.matches(self.key, request.operator_key.key_secret):
            self.rt.log.warning("operator key refused", extra={"rpc": "IssueAdminToken"})
            await self.rt.bus.publish(
                "grainhouse.auth.audit.operator_key_refused", {"rpc": "IssueAdminToken"}
            )
            raise GrainhouseError(Kind.UNAUTHENTICATED, "operator key refused")
        account = request.account_id or tokens.OPERATOR_ACCOUNT
        secret, token = await tokens.issue(
            self.pool, account, request.name, ("admin",), self._ttl(request.ttl_seconds)
        )
        await self.rt.bus.publish(
            "grainhouse.auth.token.created",
            {"token_id": token.token_id, "account_id": account, "scopes": ["admin"]},
        )
        return auth_pb2.IssueAdminTokenResponse(token_secret=secret, token=token_to_pb(token))

    async def AuthenticateToken(
        self, request: auth_pb2.AuthenticateTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthenticateTokenResponse:
        token = await tokens.authenticate(self.pool, request.bearer_secret)
        top = max((tokens.SCOPES.index(s) for s in token.scopes), default=0)
        principal = auth_pb2.Principal(
            kind=auth_pb2.PRINCIPAL_KIND_API_TOKEN,
            account_id=token.account_id,
            credential_id=token.token_id,
            scope=_SCOPE_TO_PB[tokens.SCOPES[top]],
            is_admin=token.is_admin_account and "admin" in token.scopes,
        )
        principal.expires_at.CopyFrom(_ts(token.expires_at))
        return auth_pb2.AuthenticateTokenResponse(principal=principal, cache_ttl_seconds=5)
