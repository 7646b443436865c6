"""Housekeeping: deleting rows that can never be used again, periodically, in bounded batches.

Owns: the deletion of dead rows from auth's own tables: sessions ended or expired longer ago
than the grace period; used or
expired one-time tickets (email codes, TOTP challenges, OIDC states at once; setup links and
invitations after the grace period, so an admin still sees them as expired for a while);
personal API tokens expired or revoked longer ago than the grace period; share links and grain
API tokens whose grant expired longer ago than the grace period; rate-limit rows whose failures
are forgotten anyway (one block period after the last, ratelimit.py).
Trusts: the database clock (every auth instance agrees); deletions are idempotent, so several
instances running it at once only share the work.
Never: deletes anything still usable: every rule below matches only rows that every check in
sessions/tickets/tokens/principals already refuses. A grant that expired is dead along with its
whole subtree (permissions.py), so deleting it changes no decision.

Each statement deletes at most `batch` rows and commits, so a large backlog never holds long
locks or one huge transaction; a run loops until a batch comes back short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("grainhouse.auth.housekeeping")


@dataclass(frozen=True)
class Policy:
    grace_seconds: float = 7 * 86400
    rate_limit_forget_seconds: float = 3600  # = the login block period (ratelimit.Policy)
    batch: int = 1000


# (name, table, the condition of a dead row). %(grace)s and %(forget)s are seconds.
_RULES: tuple[tuple[str, str, str], ...] = (
    # Sessions are kept through the grace period too: a stale cookie whose row is still there is
    # a stale credential, not a guess (ratelimit.guarded), so a browser coming back with an old
    # cookie costs its address nothing.
    ("sessions_ended", "sessions", "ended_at < now() - make_interval(secs => %(grace)s)"),
    (
        "sessions_expired",
        "sessions",
        "least(idle_expires_at, absolute_expires_at) < now() - make_interval(secs => %(grace)s)",
    ),
    (
        "tickets_short",
        "tickets",
        "kind IN ('email', 'challenge', 'oidc_state') AND (used_at IS NOT NULL"
        " OR expires_at < now())",
    ),
    (
        "tickets_links",
        "tickets",
        "kind IN ('setup', 'invitation') AND coalesce(least(used_at, expires_at), expires_at)"
        " < now() - make_interval(secs => %(grace)s)",
    ),
    (
        "api_tokens",
        "api_tokens",
        "expires_at < now() - make_interval(secs => %(grace)s)"
        " OR revoked_at < now() - make_interval(secs => %(grace)s)",
    ),
    (
        "grain_credentials",
        "grain_credentials",
        "credential_id IN (SELECT g.grantee_id FROM grants g"
        " WHERE g.grantee_kind = grain_credentials.kind"
        " AND g.expires_at < now() - make_interval(secs => %(grace)s))",
    ),
    ("grants", "grants", "expires_at < now() - make_interval(secs => %(grace)s)"),
    # Origins are kept through the grace period once ended, like sessions: an old tab coming
    # back to an ended origin is not a guess (rpc_origins.ResolveOrigin).
    (
        "origins",
        "origins",
        "coalesce(closed_at, idle_expires_at) < now() - make_interval(secs => %(grace)s)",
    ),
    (
        "rate_limits",
        "rate_limits",
        "blocked_until < now() AND last_failure_at < now() - make_interval(secs => %(forget)s)",
    ),
)


async def run_once(pool: AsyncConnectionPool, policy: Policy) -> dict[str, int]:
    """Delete every dead row now; returns rows deleted per rule (only rules that deleted)."""
    params = {
        "grace": float(policy.grace_seconds),
        "forget": float(policy.rate_limit_forget_seconds),
        "batch": policy.batch,
    }
    deleted: dict[str, int] = {}
    for name, table, condition in _RULES:
        # ctid batches: PostgreSQL has no DELETE … LIMIT. Table and condition are constants.
        query = (
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - constant SQL text; values go in as parameters
            f"SELECT ctid FROM {table} WHERE {condition} LIMIT %(batch)s))"
        )
        while True:
            async with pool.connection() as conn:
                count = (await conn.execute(query, params)).rowcount
                await conn.commit()
            if count:
                deleted[name] = deleted.get(name, 0) + count
            if count < policy.batch:
                break
    return deleted


async def run_forever(
    pool: AsyncConnectionPool, policy: Policy, interval: float, stop: asyncio.Event
) -> None:
    """Run `run_once` every `interval` seconds until `stop`; a failed run is logged and retried
    at the next interval (housekeeping must never take the service down)."""
    first = min(interval, 10.0)  # soon after start, then at the interval
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), first)
    while not stop.is_set():
        try:
            deleted = await run_once(pool, policy)
            if deleted:
                log.info("housekeeping deleted dead rows", extra={"deleted": deleted})
        except Exception as exc:  # any failure waits for the next run
            log.warning("housekeeping failed: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
