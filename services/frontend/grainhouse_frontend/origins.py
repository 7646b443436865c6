"""Per-session grain origins: `ui-<id>.<wildcard host>`, one random origin per grain session.

Owns: the table origin id → (credential, grain, grainmgr session, tab), in this process's
memory, and the parsing of grain hosts (`ui-<id>.…`, `api-<…>.…`).
Trusts: the platform page that registered an origin (it asked auth.Authorize first).
Never: hands a credential to anything but auth; outlives its idle timeout.

Why the id is the capability: a browser never sends platform cookies to a `ui-` host (they are
host-only cookies of the platform origin), so the origin itself must name the session. The id is
128 random bits, valid only while used (idle expiry), and every request through it is authorized
again by auth (cached at most auth's TTL, dropped at once on a revocation event) — revoking the
underlying grant or logging out closes the origin. Grain responses carry `Referrer-Policy:
no-referrer` so the host does not leak to third parties through links.
TODO(someday): several frontends need sticky routing by host, or this table in NATS KV.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from grainhouse_proto import auth_pb2

IDLE_SECONDS = 3600.0
MAX_ORIGINS = 50_000
_ID = re.compile(r"^[a-z0-9]{20,40}$")


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
    credential: auth_pb2.Credential
    tab_id: str
    session_type: str = "normal"  # or "api"
    grainmgr_session: str = ""
    session_permissions: tuple[str, ...] = ()  # what grainmgr's session was opened with
    last_used: float = field(default_factory=time.monotonic)
    decision: Decision | None = None
    user_agent: str = ""


def new_origin_id() -> str:
    # base32 lowercase: valid in a DNS label, case-insensitive as hosts are.
    return secrets.token_hex(16)


class Origins:
    def __init__(self, wildcard_host: str) -> None:
        # "*.localhost:6080" → suffix ".localhost:6080"
        self.suffix = wildcard_host.removeprefix("*").lower()
        self._table: dict[str, Origin] = {}

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
        if label.startswith("ui-") and _ID.match(label[3:]):
            return "ui", label[3:]
        if label == "api" or label.startswith("api-"):
            return "api", ""
        if label.startswith("ui-"):
            return "ui", ""
        return None

    def add(self, origin: Origin) -> Origin:
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

    def drop(self, origin_id: str) -> None:
        self._table.pop(origin_id, None)

    def expire(self) -> None:
        now = time.monotonic()
        for oid in [k for k, o in self._table.items() if now - o.last_used > IDLE_SECONDS]:
            del self._table[oid]

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
