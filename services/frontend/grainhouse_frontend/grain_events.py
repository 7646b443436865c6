"""grainmgr's grain events → the frontend's grainmgr sessions, at once.

Owns: the subscription to `grainhouse.grainmgr.grain.*` (JSON events, decoded by
grainhouse_common.bus.Bus.subscribe; fields as grains.py publishes them: grain_id, state, ...).
Trusts: grainmgr as the only publisher on those subjects (NATS permissions in production).
Never: grants or opens anything: an event can only make the next request open a new grainmgr
session, so a forged one costs an OpenSession.

Why: a grain that stopped (idle, by its owner, a crash) took its sessions with it. Without
this, the next request through an origin first asks grainmgr for a stream of the dead session
(NOT_FOUND) and only then opens a new one: a gRPC round trip on every reopening's cold path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grainhouse_frontend.origins import Origins

SUBJECT = "grainhouse.grainmgr.grain.*"
# Events after which a grain has no sessions any more.
ENDED = {"stopped", "crashed", "trashed", "deleted"}
log = logging.getLogger("grainhouse.frontend.grain_events")


def handler(origins: Origins) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """For Bus.subscribe(SUBJECT, handler(...))."""

    async def on_event(subject: str, event: dict[str, Any]) -> None:
        if subject.rsplit(".", 1)[-1] not in ENDED:
            return
        grain_id = event.get("grain_id") if isinstance(event, dict) else None
        if not isinstance(grain_id, str) or not grain_id:
            log.warning("malformed grain event ignored")
            return
        origins.forget_sessions(grain_id)

    return on_event
