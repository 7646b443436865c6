"""Backup's NATS events (`grainhouse.backup.<noun>.<event>`), as protobuf with a request id.

Owns: the subjects backup publishes on: `grainhouse.backup.task.finished` (BackupTask, every
task that ends) and `grainhouse.backup.run.failed` (BackupTask with task and grain ids, each
failed backup run, so a failure is never silent).
Trusts: the Bus to reconnect; a lost event is counted in grainhouse_backup_nats_errors_total.
Never: puts archive content, storage paths or secrets in an event.
"""

from __future__ import annotations

import logging

from nats.errors import Error as NatsError

from grainhouse_common import requestid
from grainhouse_common.bus import Bus

log = logging.getLogger("grainhouse.backup.events")


class Events:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def publish(self, subject: str, payload: bytes) -> None:
        nc = self.bus.nc
        if nc is None:
            self.bus.metrics.nats_errors.labels(operation="publish").inc()
            return
        try:
            await nc.publish(subject, payload, headers={requestid.HEADER: requestid.ensure()})
        except (NatsError, OSError) as exc:
            self.bus.metrics.nats_errors.labels(operation="publish").inc()
            log.warning("event %s lost: %s", subject, type(exc).__name__)
