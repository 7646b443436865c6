"""Error kinds and the one table that maps them to HTTP, gRPC and NATS.

Owns: the `Kind` vocabulary and `GrainhouseError`, the only exception type that crosses
a service edge.
Trusts: nothing; a message passed here must already be safe to show to a caller.
Never: carries secrets, stack traces or foreign exception text in `public_message`.

Each service raises `GrainhouseError(kind, message)` in its core; the edges (gRPC
servicer, HTTP routes, NATS handlers) translate once with the table below. Foreign
exceptions (psycopg, grpc, nats, capnp) are wrapped at the edge with `raise ... from`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc


class Kind(enum.Enum):
    """What went wrong, from the caller's point of view."""

    INVALID = "invalid"  # the request is malformed or a value is out of range
    UNAUTHENTICATED = "unauthenticated"  # who you are is unknown or the credential is bad
    PERMISSION = "permission"  # you are known but may not do this
    NOT_FOUND = "not_found"  # the thing does not exist (or you may not know it does)
    CONFLICT = "conflict"  # the current state forbids it (exists, in use, too old)
    TOO_LARGE = "too_large"  # a size or count cap was exceeded
    OVERLOADED = "overloaded"  # rate limited or out of capacity; retry later
    UNAVAILABLE = "unavailable"  # a dependency is down; retry later
    INTERNAL = "internal"  # a bug; the message is generic, details are in the logs


@dataclass(frozen=True)
class Mapping:
    http_status: int
    grpc_code: grpc.StatusCode
    nats_header: str  # value of the `Grainhouse-Error` header on a NATS reply


# The one table. Adding a kind means adding a row here; tests check it is total.
TABLE: dict[Kind, Mapping] = {
    Kind.INVALID: Mapping(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    Kind.UNAUTHENTICATED: Mapping(401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    Kind.PERMISSION: Mapping(403, grpc.StatusCode.PERMISSION_DENIED, "permission"),
    Kind.NOT_FOUND: Mapping(404, grpc.StatusCode.NOT_FOUND, "not_found"),
    Kind.CONFLICT: Mapping(409, grpc.StatusCode.FAILED_PRECONDITION, "conflict"),
    Kind.TOO_LARGE: Mapping(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
    Kind.OVERLOADED: Mapping(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded"),
    Kind.UNAVAILABLE: Mapping(503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    Kind.INTERNAL: Mapping(500, grpc.StatusCode.INTERNAL, "internal"),
}

# gRPC codes seen from a peer, mapped back to kinds (used by clients at their edge).
_FROM_GRPC: dict[grpc.StatusCode, Kind] = {
    grpc.StatusCode.INVALID_ARGUMENT: Kind.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: Kind.INVALID,
    grpc.StatusCode.UNAUTHENTICATED: Kind.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: Kind.PERMISSION,
    grpc.StatusCode.NOT_FOUND: Kind.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Kind.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: Kind.CONFLICT,
    grpc.StatusCode.ABORTED: Kind.CONFLICT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Kind.OVERLOADED,
    grpc.StatusCode.UNAVAILABLE: Kind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Kind.UNAVAILABLE,
    grpc.StatusCode.CANCELLED: Kind.UNAVAILABLE,
}


class GrainhouseError(Exception):
    """An error with a kind and a message that is safe to show to the caller."""

    def __init__(self, kind: Kind, public_message: str) -> None:
        super().__init__(public_message)
        self.kind = kind
        self.public_message = public_message

    @property
    def http_status(self) -> int:
        return TABLE[self.kind].http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return TABLE[self.kind].grpc_code

    def __repr__(self) -> str:
        return f"GrainhouseError({self.kind.value}, {self.public_message!r})"


def kind_from_grpc(code: grpc.StatusCode) -> Kind:
    """The kind a gRPC status from a peer stands for (unknown codes are internal)."""
    return _FROM_GRPC.get(code, Kind.INTERNAL)


def from_rpc_error(err: grpc.RpcError) -> GrainhouseError:
    """Translate a peer's gRPC error into ours, keeping its public message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else None
    kind = kind_from_grpc(code)
    if kind is Kind.INTERNAL:
        return GrainhouseError(kind, "internal error in a platform service")
    return GrainhouseError(kind, details or kind.value.replace("_", " "))
