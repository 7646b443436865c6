"""Scheduled backups as durable JetStream jobs: a scheduler that publishes, a worker that runs.

Owns: the JetStream stream `GRAINHOUSE_BACKUP_JOBS` (subject `grainhouse.backup.job.due`,
work-queue retention, file storage) and its durable pull consumer `backup-worker`.
Trusts: JetStream to keep a published job until it is acknowledged (across restarts of the
backup service, of NATS and of the whole stack), and PostgreSQL's unique `job_key`.
Never: acknowledges a job before its backup is recorded; runs one job's backup twice.

Exactly once, in three locks:
1. the scheduler moves a schedule past its slot with a compare-and-set on `next_run_at`, so
   two schedulers (or a restart between publish and update) cannot advance it twice;
2. each job is published with `Nats-Msg-Id = job_key` ("<schedule>/<grain>/<slot>"), so a
   republished slot inside the duplicate window is dropped by JetStream itself;
3. the worker looks the job_key up in `backups` first and inserts with a unique job_key, so a
   redelivery (worker killed after the backup, before the ack) records nothing twice.
A worker killed mid-run leaves no archive (temporary files are removed at start) and no ack:
JetStream redelivers the job after `ack_wait`, and a live worker extends that with
`in_progress` while it streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from typing import Any

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import NotFoundError

from grainhouse_backup import metrics, retention, schedules
from grainhouse_backup.backups import Engine
from grainhouse_backup.store import CREATE, ScheduleRow, Store
from grainhouse_proto import grainmgr_pb2 as gpb

log = logging.getLogger("grainhouse.backup.jobs")
STREAM = "GRAINHOUSE_BACKUP_JOBS"
SUBJECT = "grainhouse.backup.job.due"
DURABLE = "backup-worker"
DUPLICATE_WINDOW = 6 * 3600.0


class Jobs:
    def __init__(
        self,
        nc: Any,
        store: Store,
        engine: Engine,
        grainmgr: Any,
        *,
        interval: float,
        ack_wait: float,
        max_deliver: int,
        period_override: int = 0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.store = store
        self.engine = engine
        self.grainmgr = grainmgr
        self.interval = interval
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.period_override = period_override

    async def setup(self) -> None:
        config = api.StreamConfig(
            name=STREAM,
            subjects=[SUBJECT],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            await self.js.stream_info(STREAM)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    # ---- scheduler --------------------------------------------------------------------------

    async def scheduler(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(dt.datetime.now(dt.UTC))
            except Exception:
                log.exception("scheduler tick failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self, now: dt.datetime) -> int:
        """Publish the jobs of every due schedule; returns how many were published."""
        metrics.SCHEDULER_LAST_RUN.set_to_current_time()
        metrics.SCHEDULES_OVERDUE.set(await self.store.overdue_count(now))
        await self.store.forget_old_tasks()  # tasks are kept 7 days after they finish
        available, capacity = self.engine.storage.usage()
        metrics.STORAGE_AVAILABLE.set(available)
        metrics.STORAGE_CAPACITY.set(capacity)
        published = 0
        for schedule in await self.store.due_schedules(now):
            assert schedule.next_run_at is not None
            slot = schedule.next_run_at
            grains = await self._grains_of(schedule)
            for grain_id in grains:
                key = f"{schedule.schedule_id}/{grain_id}/{slot.isoformat()}"
                body = {
                    "job_key": key,
                    "schedule_id": schedule.schedule_id,
                    "grain_id": grain_id,
                    "owner_account_id": schedule.owner_id,
                    "slot": slot.isoformat(),
                }
                await self.js.publish(
                    SUBJECT, json.dumps(body).encode(), headers={"Nats-Msg-Id": key}
                )
                published += 1
            following = schedules.next_slot(
                schedule.schedule_id, schedule.every, now, self.period_override
            )
            await self.store.advance_schedule(schedule.schedule_id, slot, following)
        return published

    async def _grains_of(self, schedule: ScheduleRow) -> list[str]:
        if schedule.grain_id:
            return [schedule.grain_id]
        found: list[str] = []
        token = ""
        while True:
            reply = await self.grainmgr.ListGrains(
                gpb.ListGrainsRequest(
                    owner_account_id=schedule.account_scope or "",
                    page={"page_size": 500, "page_token": token},
                )
            )
            found += [g.grain_id for g in reply.grains if g.state != gpb.GRAIN_STATE_TRASHED]
            token = reply.page.next_page_token
            if not token:
                return found

    # ---- worker -----------------------------------------------------------------------------

    async def worker(self, stop: asyncio.Event) -> None:
        sub = None
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe(
                        SUBJECT,
                        durable=DURABLE,
                        stream=STREAM,
                        config=api.ConsumerConfig(
                            ack_wait=self.ack_wait,
                            max_deliver=self.max_deliver,
                            ack_policy=api.AckPolicy.EXPLICIT,
                        ),
                    )
                msgs = await sub.fetch(1, timeout=2)
            except NatsTimeout:
                continue
            except (NatsError, OSError, TimeoutError) as exc:
                log.warning("job fetch failed (%s); retrying", type(exc).__name__)
                sub = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)
                continue
            for msg in msgs:
                await self.handle(msg)

    async def handle(self, msg: Any) -> None:
        try:
            job = json.loads(msg.data)
            key = str(job["job_key"])
            schedule_id = str(job["schedule_id"])
            grain_id = str(job["grain_id"])
            owner = str(job["owner_account_id"])
        except (ValueError, KeyError, TypeError):
            log.error("dropping a malformed job")
            await msg.term()
            return
        if await self.store.backup_for_job(key) is not None:
            await msg.ack()  # made by an earlier delivery that died before its ack
            return
        schedule = await self.store.get_schedule(schedule_id)
        if schedule is None:
            await msg.ack()  # the schedule was deleted before its run began
            return
        task, _ = await self.engine.new_task(CREATE, owner, grain_id, job_key=key)
        slot = str(job.get("slot", ""))[:40]
        row = await self.engine.run_backup(
            task,
            schedule_id=schedule_id,
            job_key=key,
            touch=msg.in_progress,
            note=f"Scheduled {schedule.every} backup, slot {slot}",
        )
        await self.store.schedule_ran(schedule_id, task.task_id)
        if row is None:
            failed = await self.store.get_task(task.task_id, None)
            attempts = msg.metadata.num_delivered if msg.metadata else self.max_deliver
            if failed is not None and failed.error_retryable and attempts < self.max_deliver:
                await msg.nak(delay=min(60.0, 5.0 * attempts))
            else:
                await msg.ack()
            return
        await self.prune(schedule, grain_id)
        await msg.ack()

    async def prune(self, schedule: ScheduleRow, grain_id: str) -> list[str]:
        rule = retention.Rule(schedule.keep_last, schedule.keep_daily, schedule.keep_weekly)
        rows = await self.store.schedule_backups(schedule.schedule_id, grain_id)
        items = [retention.Item(r.backup_id, r.created_at) for r in rows]
        gone = retention.to_delete(items, rule)
        for backup_id in gone:
            if await self.store.delete_backup(backup_id, None):
                self.engine.storage.delete(backup_id)
        return gone
