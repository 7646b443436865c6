"""What auth tells the rest of the platform on NATS: revocations and audit events.

Owns: the subjects `grainhouse.auth.grant.revoked` (the fields of auth.proto's
AccessRevokedEvent as a JSON object) and `grainhouse.auth.audit.<event>`; both JSON, like every
event on the bus (grainhouse_common.bus).
Trusts: the bus to deliver; it flushes revocations so they are on the wire before the RPC that
caused them answers.
Never: puts a secret, a password, an email code or a token in an event (ids only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from nats.errors import Error as NatsError

from grainhouse_common.bus import Bus

REVOKED_SUBJECT = "grainhouse.auth.grant.revoked"
AUDIT_PREFIX = "grainhouse.auth.audit."
log = logging.getLogger("grainhouse.auth.events")


class Events:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def revoked(
        self,
        *,
        grain_id: str = "",
        grant_ids: Iterable[str] = (),
        credential_ids: Iterable[str] = (),
        account_id: str = "",
    ) -> bool:
        event: dict[str, Any] = {
            "grain_id": grain_id,
            "grant_ids": list(grant_ids),
            "credential_ids": list(credential_ids),
            "account_id": account_id,
        }
        if not (grain_id or event["grant_ids"] or event["credential_ids"] or account_id):
            return True
        event["at"] = datetime.now(UTC).isoformat()
        nc = self.bus.nc
        if nc is None:
            log.error("revocation not published: NATS not connected")
            return False
        if not await self.bus.publish(REVOKED_SUBJECT, event):
            log.error("revocation publish failed")
            return False
        try:
            # On the wire before the RPC answers, so caches drop entries "at once".
            await nc.flush(timeout=2)
            return True
        except (NatsError, OSError, TimeoutError) as exc:
            log.error("revocation publish failed: %s", type(exc).__name__)
            return False

    async def audit(self, event: str, **fields: Any) -> None:
        fields["at"] = datetime.now(UTC).isoformat()
        await self.bus.publish(AUDIT_PREFIX + event, fields)
