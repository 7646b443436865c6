"""Sessions of running grains and the one-time keys that open their byte streams.

Owns: the in-memory table of live sessions (per grain) and of unused stream keys.
Trusts: grains.py to end sessions when their grain stops.
Never: stores a key longer than its 30 s life; lets a key open more than one stream, or a
stream of another session or grain than the key was made for.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

KEY_TTL_SECONDS = 30.0  # grain.capnp streamKeyTimeoutSeconds
MAX_KEYS = 100_000


@dataclass
class Session:
    session_id: str
    grain_id: str
    handle: Any  # the bridge's SessionHandle capability; dropping it ends the session
    opened: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    open_streams: int = 0


@dataclass(frozen=True)
class Ticket:
    secret: str  # base64url of 32 random bytes: what the frontend sends in the handshake
    expires_at: dt.datetime


@dataclass(frozen=True)
class _Key:
    grain_id: str
    session_id: str
    deadline: float


class StreamKeys:
    """One-time stream keys: issued by OpenSession/OpenStream, claimed once by the relay."""

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}

    def issue(self, grain_id: str, session_id: str) -> Ticket:
        self._expire()
        if len(self._keys) >= MAX_KEYS:
            # Unused keys only cost memory; the oldest ones go first.
            for old in list(self._keys)[: MAX_KEYS // 10]:
                del self._keys[old]
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        self._keys[secret] = _Key(grain_id, session_id, time.monotonic() + KEY_TTL_SECONDS)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=KEY_TTL_SECONDS)
        return Ticket(secret, expires)

    def claim(self, secret: str) -> tuple[str, str] | None:
        """(grain_id, session_id) for a live key, which is used up; None otherwise."""
        key = self._keys.pop(secret, None)
        if key is None or key.deadline < time.monotonic():
            return None
        return key.grain_id, key.session_id

    def forget_grain(self, grain_id: str) -> None:
        for secret in [s for s, k in self._keys.items() if k.grain_id == grain_id]:
            del self._keys[secret]

    def _expire(self) -> None:
        now = time.monotonic()
        for secret in [s for s, k in self._keys.items() if k.deadline < now]:
            del self._keys[secret]


def new_session_id() -> str:
    return secrets.token_urlsafe(24)
