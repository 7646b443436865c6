"""Rate limits with backoff, per account and per address, stored in PostgreSQL.

Owns: rows of `rate_limits` (one per key such as "login:acct:<sha256 of email>").
Trusts: the database clock, so every auth instance sharing the database agrees.
Never: stores an email, a password or a secret in a key (accounts are keyed by a hash).

The rule: the first `free` failures cost nothing; each one after that makes the key wait twice
as long as the last (slowed), up to `max_delay`; from `block_after` failures on, the key is
blocked for `block_seconds` (blocked). A key forgets its failures `block_seconds` after the last
one; a success clears the account key (never the address key, so one valid account does not
unlock guessing at others from the same address).

Token guesses (`guarded`): every RPC that resolves a secret presented from outside (bearer
tokens, share-link secrets, session cookies; the frontend passes the client's address) counts a
secret that does not resolve and was never issued (no stored row has its hash: a stale but real
credential, expired, ended or revoked and still kept, is not a guess, so a script retrying with
an expired token does not lock its neighbours out) against `guess:addr:<address>`, with the
login numbers. Our
secrets name no account (256 random bits after a kind prefix), so there is no account key;
a key per prefix would let one guesser lock every client of that kind out. A correct secret
from a waiting address is refused too (else it would be no limit), and success counts nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from psycopg_pool import AsyncConnectionPool

from grainhouse_auth.store import Conn, one, run
from grainhouse_common.errors import GrainhouseError, Kind


@dataclass(frozen=True)
class Policy:
    free: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0
    block_after: int = 20
    block_seconds: float = 3600.0

    def penalty(self, failures: int) -> float:
        """Seconds the key must wait after its `failures`-th failure."""
        if failures >= self.block_after:
            return self.block_seconds
        if failures <= self.free:
            return 0.0
        return float(min(self.base_delay * 2 ** (failures - self.free - 1), self.max_delay))


def account_key(action: str, identity: str) -> str:
    digest = hashlib.sha256(identity.strip().lower().encode()).hexdigest()[:32]
    return f"{action}:acct:{digest}"


def address_key(action: str, remote_addr: str) -> str | None:
    addr = remote_addr.strip()[:64]
    return f"{action}:addr:{addr}" if addr else None


def keys(*candidates: str | None) -> list[str]:
    return [k for k in candidates if k]


async def check(conn: Conn, names: Sequence[str]) -> None:
    """OVERLOADED (RESOURCE_EXHAUSTED) with the wait in seconds if any key must wait."""
    if not names:
        return
    row = await one(
        conn,
        "SELECT extract(epoch FROM max(blocked_until) - now())::float AS wait"
        " FROM rate_limits WHERE key = ANY(%s)",
        (list(names),),
    )
    wait = None if row is None else row["wait"]
    if wait is not None and wait > 0:
        raise GrainhouseError(
            Kind.OVERLOADED, f"too many attempts: try again in {math.ceil(wait)} s"
        )


async def fail(conn: Conn, names: Sequence[str], policy: Policy) -> float:
    """Count one failure on each key; returns the longest wait now imposed."""
    longest = 0.0
    for name in names:
        row = await one(
            conn,
            "INSERT INTO rate_limits AS r (key, failures, last_failure_at) VALUES (%s, 1, now())"
            " ON CONFLICT (key) DO UPDATE SET failures = CASE"
            "   WHEN r.last_failure_at < now() - make_interval(secs => %s) THEN 1"
            "   ELSE r.failures + 1 END, last_failure_at = now()"
            " RETURNING failures",
            (name, policy.block_seconds),
        )
        assert row is not None
        wait = policy.penalty(int(row["failures"]))
        if wait > 0:
            await run(
                conn,
                "UPDATE rate_limits SET blocked_until = now() + make_interval(secs => %s)"
                " WHERE key = %s",
                (wait, name),
            )
        longest = max(longest, wait)
    return longest


T = TypeVar("T")
GUESS = "guess"


async def guarded(
    pool: AsyncConnectionPool,
    address: str,
    policy: Policy,
    attempt: Callable[[], Awaitable[T]],
    counts: Collection[Kind] = (Kind.UNAUTHENTICATED,),
    spare: tuple[type[Exception], ...] = (),
    stale: Callable[[Conn], Awaitable[bool]] | None = None,
) -> T:
    """Run `attempt` (which resolves a secret) under the per-address guess limit.

    OVERLOADED before trying if the address must wait; a failure of a kind in `counts` (and not
    an instance of `spare`: a real credential refused for another reason) counts one guess and
    is re-raised. An empty address (an internal caller) is not limited. `stale(conn)` tells
    whether the refused secret was once issued (then it is not a guess and is not counted).
    """
    names = keys(address_key(GUESS, address))
    if not names:
        return await attempt()
    async with pool.connection() as conn:
        await check(conn, names)
    try:
        return await attempt()
    except GrainhouseError as exc:
        if exc.kind in counts and not isinstance(exc, spare):
            async with pool.connection() as conn:  # commits on leaving: the count survives
                if stale is None or not await stale(conn):
                    await fail(conn, names, policy)
        raise


async def clear(conn: Conn, name: str) -> None:
    await run(conn, "DELETE FROM rate_limits WHERE key = %s", (name,))
