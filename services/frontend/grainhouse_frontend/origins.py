"""Per-session grain origins: `ui-<id>.<wildcard host>`, one random origin per grain session.

Owns: this frontend's cache of origins (origin id → grain, tab, session type, the grainmgr
session this frontend opened for it, and auth's cached decision), and the parsing of grain
hosts (`ui-<id>.…`, `api-<…>.…`).
Trusts: auth as the owner of every `ui-` origin (auth.proto "Grain origins": CreateOrigin makes
one, ResolveOrigin tells any frontend what it is and whether it may still be used).
Never: holds the credential a `ui-` origin was opened with (auth keeps it, by id); hands a
credential to anything but auth; keeps an origin past its idle timeout.

Shared by every frontend: the record lives in auth's database, so an origin opened through one
frontend is served by any other behind the same load balancer (no sticky routing). A frontend
that does not know an origin asks auth.ResolveOrigin once, and after that only when its cached
decision expires (at most auth's TTL, 30 s) or a revocation event drops it — exactly the calls
Authorize cost before, so the cached path makes no extra call. A refusal closes the origin in
auth, for every frontend. The idle timeout is auth's (origin_idle_seconds); the local
IDLE_SECONDS only bounds this cache's memory: a forgotten entry is asked for again.

The grainmgr session behind an origin stays per frontend: each frontend opens its own session
for an origin on first use (OpenSession) and keeps its own pool of relay streams. That costs
one OpenSession per frontend and origin, and keeps grainmgr session ids (and stream keys) out of
auth and off the network between frontends; grainmgr ends a session nobody uses.

API-host origins (`api-…`, grain API tokens) are not auth records: the client sends its token
with every request, so each frontend keys them by the token's hash and asks Authorize with it.

Why the id is the capability: a browser never sends platform cookies to a `ui-` host (they are
host-only cookies of the platform origin), so the origin itself must name the session. The id is
128 random bits made by auth (stored there as a SHA-256 only), valid only while used (idle
expiry), and every request through it is authorized again by auth (cached at most auth's TTL,
dropped at once on a revocation event) — revoking the underlying grant or logging out closes the
origin. Grain responses carry `Referrer-Policy: no-referrer` so the host does not leak to third
parties through links.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

from grainhouse_proto import auth_pb2, auth_pb2_grpc

IDLE_SECONDS = 3600.0
MAX_ORIGINS = 50_000
_ID = re.compile(r"[0-9a-f]{32}")  # auth.proto CreateOriginResponse.origin_id
GONE_SECONDS = 10.0
MAX_GONE = 10_000


@dataclass
class Decision:
    permissions: list[str]
    identity: object  # common_pb2.AppIdentity
    grant_chain: list[str]
    credential_id: str
    expires: float


@dataclass
class Origin:
    origin_id: str
    grain_id: str
    # Only for API-host origins (the request's own grain API token); None for `ui-` origins,
    # whose credential auth keeps.
    credential: auth_pb2.Credential | None
    tab_id: str
    session_type: str = "normal"  # or "api"
    grainmgr_session: str = ""
    session_permissions: tuple[str, ...] = ()  # what grainmgr's session was opened with
    last_used: float = field(default_factory=time.monotonic)
    decision: Decision | None = None
    user_agent: str = ""
    # auth's answer being asked for (grain_proxy._decide): concurrent requests that find the
    # decision expired wait for this one call instead of each asking auth again.
    deciding: asyncio.Future[Decision] | None = None


def decision_from(reply: auth_pb2.AuthorizeResponse, now: float) -> Decision:
    """The cached form of an allowed AuthorizeResponse (expires after auth's TTL, 30 s at most)."""
    return Decision(
        list(reply.permissions),
        reply.identity,
        list(reply.grant_chain),
        reply.principal.credential_id,
        now + min(reply.cache_ttl_seconds, 30),
    )


class Origins:
    def __init__(self, wildcard_host: str) -> None:
        # "*.localhost:6080" → suffix ".localhost:6080"
        self.suffix = wildcard_host.removeprefix("*").lower()
        self._table: dict[str, Origin] = {}
        # Ids auth just called unknown or ended → until when to answer so without asking again
        # (an old tab polling a dead origin costs auth one call per GONE_SECONDS).
        self._gone: dict[str, float] = {}

    def url(self, origin_id: str, scheme: str) -> str:
        return f"{scheme}://ui-{origin_id}{self.suffix}"

    def api_url(self, scheme: str) -> str:
        return f"{scheme}://api{self.suffix}"

    def host_kind(self, host: str) -> tuple[str, str] | None:
        """("ui", id) or ("api", "") for a grain host, None for the platform host."""
        host = host.lower()
        if not host.endswith(self.suffix):
            # Also accept the host without the port when the suffix carries one.
            bare = self.suffix.rsplit(":", 1)[0] if ":" in self.suffix else self.suffix
            if ":" in host or not host.endswith(bare):
                return None
            label = host[: -len(bare)]
        else:
            label = host[: -len(self.suffix)]
        if label.startswith("ui-") and _ID.fullmatch(label[3:]):
            return "ui", label[3:]
        if label == "api" or label.startswith("api-"):
            return "api", ""
        if label.startswith("ui-"):
            return "ui", ""
        return None

    async def open(
        self,
        auth: auth_pb2_grpc.AuthStub,
        credential: auth_pb2.Credential,
        grain_id: str,
        client_address: str,
        scheme: str,
    ) -> str:
        """Have auth make a new `ui-` origin for this credential and grain; its URL (with a
        trailing slash). It is known here from the start, so its first request is no lookup
        (lookup_budget.py); its decision comes from auth on that request."""
        made = await auth.CreateOrigin(
            auth_pb2.CreateOriginRequest(
                credential=credential,
                grain_id=grain_id,
                session_type=auth_pb2.ORIGIN_SESSION_TYPE_NORMAL,
                client_address=client_address,
            ),
            timeout=5,
        )
        self.add(Origin(made.origin_id, grain_id, None, tab_id=made.tab_id))
        return self.url(made.origin_id, scheme) + "/"

    def add(self, origin: Origin) -> Origin:
        """Remember `origin`; if one with its id is known already (the first requests of an
        origin all ask auth at once, and each makes one), that one is kept and returned, so
        they all share one grainmgr session and its streams."""
        known = self.get(origin.origin_id)
        if known is not None:
            return known
        self.expire()
        if len(self._table) >= MAX_ORIGINS:
            oldest = min(self._table.values(), key=lambda o: o.last_used)
            del self._table[oldest.origin_id]
        self._table[origin.origin_id] = origin
        return origin

    def get(self, origin_id: str) -> Origin | None:
        origin = self._table.get(origin_id)
        if origin is None:
            return None
        now = time.monotonic()
        if now - origin.last_used > IDLE_SECONDS:
            del self._table[origin_id]
            return None
        origin.last_used = now
        return origin

    def drop(self, origin_id: str, gone: bool = False) -> None:
        """Forget an origin; `gone` = auth said it is unknown or ended (remember that briefly)."""
        self._table.pop(origin_id, None)
        if gone:
            now = time.monotonic()
            if len(self._gone) >= MAX_GONE:
                self._gone = {k: t for k, t in self._gone.items() if t > now}
            if len(self._gone) < MAX_GONE:
                self._gone[origin_id] = now + GONE_SECONDS

    def is_gone(self, origin_id: str) -> bool:
        until = self._gone.get(origin_id)
        if until is None:
            return False
        if until <= time.monotonic():
            del self._gone[origin_id]
            return False
        return True

    def expire(self) -> None:
        now = time.monotonic()
        for oid in [k for k, o in self._table.items() if now - o.last_used > IDLE_SECONDS]:
            del self._table[oid]

    def forget_sessions(self, grain_id: str) -> int:
        """The grain stopped: its grainmgr sessions are gone (the next request opens one)."""
        n = 0
        for origin in self._table.values():
            if origin.grain_id == grain_id and origin.grainmgr_session:
                origin.grainmgr_session = ""
                n += 1
        return n

    def forget_decisions(
        self,
        credential_ids: set[str],
        grant_ids: set[str],
        grain_id: str = "",
        everything: bool = False,
    ) -> int:
        """Drop cached Authorize answers a revocation event touches (they are asked again)."""
        n = 0
        for origin in self._table.values():
            d = origin.decision
            if d is None:
                continue
            if (
                everything
                or d.credential_id in credential_ids
                or grant_ids.intersection(d.grant_chain)
                or (
                    grain_id
                    and origin.grain_id == grain_id
                    and not grant_ids
                    and not credential_ids
                )
            ):
                origin.decision = None
                n += 1
        return n
