"""Auth's revocation events → the frontend's caches, at once.

Owns: the subscription to `grainhouse.auth.grant.revoked` (a JSON event like every other on the
bus, decoded by grainhouse_common.bus.Bus.subscribe; its fields are documented by auth.proto's
AccessRevokedEvent).
Trusts: auth as the only publisher on that subject (NATS permissions in production).
Never: grants anything: an event can only drop cached answers, so a forged one costs a re-check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grainhouse_frontend.identity import Identity
from grainhouse_frontend.origins import Origins

SUBJECT = "grainhouse.auth.grant.revoked"
log = logging.getLogger("grainhouse.frontend.revocations")


def _ids(event: dict[str, Any], name: str) -> set[str]:
    value = event.get(name) or []
    if not isinstance(value, list):
        return set()
    return {v for v in value if isinstance(v, str) and v}


def apply(event: dict[str, Any], ident: Identity, origins: Origins) -> int:
    creds = _ids(event, "credential_ids")
    grants = _ids(event, "grant_ids")
    grain_id = event.get("grain_id") or ""
    account_id = event.get("account_id") or ""
    if not isinstance(grain_id, str) or not isinstance(account_id, str):
        log.warning("malformed revocation event: dropping every cached decision")
        grain_id, account_id = "", "?"
    ident.forget_credentials(creds)
    dropped = origins.forget_decisions(creds, grants, grain_id)
    if account_id:
        ident.forget_account(account_id)
        # Which origins belong to that account is auth's knowledge: re-ask for all of them.
        dropped += origins.forget_decisions(set(), set(), "", everything=True)
    return dropped


def handler(ident: Identity, origins: Origins) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """For Bus.subscribe(SUBJECT, handler(...)): the bus decodes the JSON, this applies it."""

    async def on_event(subject: str, event: dict[str, Any]) -> None:
        if not isinstance(event, dict):
            log.warning("malformed revocation event ignored")
            return
        apply(event, ident, origins)

    return on_event
