"""Auth's revocation events → the frontend's caches, at once.

Owns: the subscription to `grainhouse.auth.grant.revoked` (protobuf AccessRevokedEvent, as
auth.proto says — not the bus's JSON events).
Trusts: auth as the only publisher on that subject (NATS permissions in production).
Never: grants anything: an event can only drop cached answers, so a forged one costs a re-check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grainhouse_frontend.identity import Identity
from grainhouse_frontend.origins import Origins
from grainhouse_proto import auth_pb2

SUBJECT = "grainhouse.auth.grant.revoked"
log = logging.getLogger("grainhouse.frontend.revocations")


def apply(event: auth_pb2.AccessRevokedEvent, ident: Identity, origins: Origins) -> int:
    creds = set(event.credential_ids)
    grants = set(event.grant_ids)
    ident.forget_credentials(creds)
    dropped = origins.forget_decisions(creds, grants, event.grain_id)
    if event.account_id:
        ident.forget_account(event.account_id)
        # Which origins belong to that account is auth's knowledge: re-ask for all of them.
        dropped += origins.forget_decisions(set(), set(), "", everything=True)
    return dropped


def handler(ident: Identity, origins: Origins) -> Callable[[Any], Awaitable[None]]:
    async def on_msg(msg: Any) -> None:
        try:
            event = auth_pb2.AccessRevokedEvent.FromString(msg.data)
        except Exception:
            log.warning("malformed revocation event ignored")
            return
        apply(event, ident, origins)

    return on_msg
