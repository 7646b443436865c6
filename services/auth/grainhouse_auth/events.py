"""What auth tells the rest of the platform on NATS: revocations and audit events.

Owns: the subjects `grainhouse.auth.grant.revoked` (protobuf AccessRevokedEvent) and
`grainhouse.auth.audit.<event>` (JSON).
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

from grainhouse_common import requestid
from grainhouse_common.bus import Bus
from grainhouse_proto import auth_pb2

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
        event = auth_pb2.AccessRevokedEvent(
            grain_id=grain_id,
            grant_ids=list(grant_ids),
            credential_ids=list(credential_ids),
            account_id=account_id,
        )
        if not (event.grant_ids or event.credential_ids or event.account_id or event.grain_id):
            return True
        event.at.FromDatetime(datetime.now(UTC))
        nc = self.bus.nc
        if nc is None:
            log.error("revocation not published: NATS not connected")
            return False
        try:
            await nc.publish(
                REVOKED_SUBJECT,
                event.SerializeToString(),
                headers={requestid.HEADER: requestid.ensure()},
            )
            # On the wire before the RPC answers, so caches drop entries "at once".
            await nc.flush(timeout=2)
            return True
        except (NatsError, OSError, TimeoutError) as exc:
            log.error("revocation publish failed: %s", type(exc).__name__)
            return False

    async def audit(self, event: str, **fields: Any) -> None:
        fields["at"] = datetime.now(UTC).isoformat()
        await self.bus.publish(AUDIT_PREFIX + event, fields)
