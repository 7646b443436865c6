"""How many grain-origin lookups at auth each client address may cause: a token bucket each.

Owns: per-address budgets (in this process's memory, at most MAX_ADDRESSES, the least recently
seen dropped first) of `ui-` origins this frontend does not know and must ask auth about.
Trusts: the caller for the client address (uvicorn's, after GRAINHOUSE_FRONTEND_TRUSTED_PROXIES).
Never: limits an origin this frontend already knows (those cost auth nothing), or decides access.

Why: any request to an unknown `ui-<id>` host makes the frontend ask auth.ResolveOrigin (one
indexed row in PostgreSQL), and no credential is needed to send one. Without a budget, a client
could turn its request rate into auth's database load. Legitimate misses are rare (an origin
made through another frontend, a stale tab): BURST at once, then RATE per second.
"""

from __future__ import annotations

import math
from collections import OrderedDict

RATE = 10.0  # lookups per second per address, refilled continuously
BURST = 60.0  # lookups an address may make at once
MAX_ADDRESSES = 10_000


class LookupBudget:
    def __init__(
        self, rate: float = RATE, burst: float = BURST, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, address: str, now: float) -> int:
        """0 if `address` may make one more lookup now (and it is counted), else the whole
        seconds to wait before it may (a Retry-After value, at least 1)."""
        tokens, at = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[address] = (tokens - 1.0, now)
            wait = 0
        else:
            self._buckets[address] = (tokens, now)
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait
