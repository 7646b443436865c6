"""The request id: one per incoming call, carried across gRPC metadata and NATS headers.

Owns: the context variable that holds the current request id.
Trusts: a peer's id only if it looks like one of ours (short, safe characters).
Never: uses a client-chosen id that could inject text into log lines.
"""

from __future__ import annotations

import contextvars
import re
import secrets

# Name on the wire: gRPC metadata key (lowercase, as gRPC requires) and NATS/HTTP header.
GRPC_KEY = "x-request-id"
HEADER = "X-Request-Id"

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_SAFE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def new() -> str:
    return secrets.token_hex(8)


def accept(candidate: str | None) -> str:
    """The peer's id when it is well formed, else a fresh one."""
    if candidate and _SAFE.match(candidate):
        return candidate
    return new()


def get() -> str | None:
    return _current.get()


def ensure() -> str:
    """The current id, creating one for work that started here (timers, CLI calls)."""
    rid = _current.get()
    if rid is None:
        rid = new()
        _current.set(rid)
    return rid


def set_current(rid: str) -> contextvars.Token[str | None]:
    return _current.set(rid)


def reset(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)
