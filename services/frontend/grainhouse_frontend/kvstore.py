"""Short-lived shared records of the REST API: Idempotency-Key replays and task resources.

Owns: the records' keys and TTLs, in NATS JetStream KV (bucket `grainhouse_frontend`) when
the bus has JetStream, else in this process's memory.
Trusts: NATS; nothing a client sends beyond the opaque keys it chose.
Never: stores a secret (token secrets in a replayed answer are the one exception — see
`IDEMPOTENT_SECRET_TTL` — and they expire with the record).

Why NATS KV: the frontend has no database, and several frontends behind one load balancer must
see one another's idempotency records and tasks; NATS already runs for events, and a KV bucket
with a max age is exactly "a shared dict that forgets". Memory is the fallback for a bus without
JetStream, and is correct only with a single frontend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Protocol

log = logging.getLogger("grainhouse.frontend.kv")
BUCKET = "grainhouse_frontend"
TTL_SECONDS = 24 * 3600


class Store(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...
    async def put(self, key: str, value: dict[str, Any]) -> None: ...
    async def create(self, key: str, value: dict[str, Any]) -> bool: ...


def safe_key(*parts: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; hash what clients chose.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class MemoryStore:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}

    def _sweep(self) -> None:
        now = time.monotonic()
        for k in [k for k, (t, _) in self._data.items() if t < now]:
            del self._data[k]

    async def get(self, key: str) -> dict[str, Any] | None:
        self._sweep()
        hit = self._data.get(key)
        return None if hit is None else hit[1]

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self._data[key] = (time.monotonic() + self.ttl, value)

    async def create(self, key: str, value: dict[str, Any]) -> bool:
        self._sweep()
        if key in self._data:
            return False
        await self.put(key, value)
        return True


class NatsStore:
    """The same three operations on a JetStream KV bucket."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, nc: Any) -> NatsStore | None:
        try:
            from nats.js.api import KeyValueConfig

            js = nc.jetstream()
            kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, ttl=TTL_SECONDS))
        except Exception as exc:
            log.warning("no JetStream KV (%s); idempotency records stay in memory", exc)
            return None
        return cls(kv)

    async def get(self, key: str) -> dict[str, Any] | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry is None or entry.value is None:
            return None
        return dict(json.loads(entry.value))

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.kv.put(key, json.dumps(value).encode())

    async def create(self, key: str, value: dict[str, Any]) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await self.kv.create(key, json.dumps(value).encode())
        except KeyWrongLastSequenceError:
            return False
        return True


class SwitchableStore:
    """Memory until the bus connects, then NATS KV (so a slow NATS never blocks start)."""

    def __init__(self) -> None:
        self.inner: Store = MemoryStore()

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self.inner.get(key)

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.inner.put(key, value)

    async def create(self, key: str, value: dict[str, Any]) -> bool:
        return await self.inner.create(key, value)
