"""Upkeep of running grains: liveness pings, quota reports, idle stops and the trash's end.

Owns: one round of upkeep (grainmgr's __main__ runs it every few seconds): which grain answers
no ping (killed as crashed), which went over its disk quota (metric, log line and NATS event,
once per event), which sessions and grains idled out (closed, stopped), which trashed grains
are past their retention (deleted).
Trusts: grains.py for the table of running grains and for stop, kill and delete (each takes
the grain's own lock); the launcher for quota events.
Never: touches a frozen grain (an export holds it still: it stood still, it did not idle);
stops a grain with an open stream or a wake lock for idleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr import metrics
from grainhouse_grainmgr.grains import PING_TIMEOUT_SECONDS, Grains, now
from grainhouse_grainmgr.running import Running

log = logging.getLogger("grainhouse.grainmgr.upkeep")


class Upkeep:
    def __init__(self, grains: Grains) -> None:
        self.grains = grains

    async def round(self) -> None:
        """Ping running grains, report quota overruns, stop idle ones, purge expired trash."""
        # A frozen grain (an export holds it still) answers no ping and has stood still, not
        # idled: leave it alone until it thaws. Its quota events wait for the next round.
        live = [r for r in self.grains.running.values() if not r.frozen]
        await asyncio.gather(*(self._check_alive(r) for r in live))
        for running in live:
            await self._report_quota(running)
        limit = time.monotonic() - self.grains.settings.idle_stop_seconds
        live = [r for r in self.grains.running.values() if not r.frozen]
        for running in live:
            # A session ends when no stream of it was open for the idle time (the proto's
            # OpenSessionResponse.idle_timeout_seconds); dropping the handle tells the bridge.
            for session in list(running.sessions.values()):
                if not session.open_streams and session.last_used < limit:
                    del running.sessions[session.session_id]
        for running in [r for r in self.grains.running.values() if not r.frozen]:
            if running.wake_locks:
                continue  # the app asked to stay awake (Platform.stayAwake)
            if not running.stopping and not running.streams and running.last_activity < limit:
                log.info("grain %s idle: stopping", running.grain_id)
                with contextlib.suppress(GrainhouseError):
                    await self.grains.stop(running.grain_id)
        for grain_id in await self.grains.store.expired_trash(now()):
            log.info("grain %s: trash retention over: deleting", grain_id)
            with contextlib.suppress(GrainhouseError):
                await self.grains.delete(grain_id, skip_trash=True)

    async def _report_quota(self, running: Running) -> None:
        """The launcher turned a grain's /var read-only (over quota): say so, once per event."""
        events = self.grains.launcher.quota_events(running.grain_id)
        for usage in events[running.quota_reported :]:
            if usage.exceeded:
                metrics.grain_quota_exceeded.inc()
                log.warning(
                    "grain %s is over its disk quota: /var is read-only until it shrinks",
                    running.grain_id,
                    extra={"used_bytes": usage.used_bytes, "limit_bytes": usage.limit_bytes},
                )
                await self.grains.bus.publish(
                    "grainhouse.grainmgr.grain.over_quota",
                    {
                        "grain_id": running.grain_id,
                        "used_bytes": usage.used_bytes,
                        "limit_bytes": usage.limit_bytes,
                        "at": now().isoformat(),
                    },
                )
        running.quota_reported = len(events)

    async def _check_alive(self, running: Running) -> None:
        """A bridge that does not answer ping in time counts as crashed (grain.capnp ping)."""
        now_ = time.monotonic()
        if not running.ready or running.stopping or running.frozen:
            return
        if now_ - running.last_ping < self.grains.settings.ping_interval_seconds:
            return
        running.last_ping = now_
        freezes = running.freezes
        try:
            await asyncio.wait_for(running.bridge.ping(), PING_TIMEOUT_SECONDS)
        except (TimeoutError, GrainhouseError):
            if running.stopping or self.grains.running.get(running.grain_id) is not running:
                return
            if running.frozen or running.freezes != freezes:
                return  # an export froze it while the ping waited: not a hang
            log.warning("grain %s: no answer to ping; killing it", running.grain_id)
            running.failure = "no answer to ping"
            await self.grains.kill(running, "ping")
