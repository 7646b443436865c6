"""A failed backup is never silent: the task says why, a metric grows, an event is published."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import nats
import pytest

from grainhouse_common import requestid
from grainhouse_proto import backup_pb2 as bpb

from .conftest import OWNER, Platform, new_grain, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]


def failed_runs(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('grainhouse_backup_runs_total{outcome="failed",trigger="manual"}'):
            return float(line.split()[-1])
        if line.startswith('grainhouse_backup_runs_total{trigger="manual",outcome="failed"}'):
            return float(line.split()[-1])
    raise AssertionError("no grainhouse_backup_runs_total in /metrics")


def test_failed_backup_raises_a_metric_and_an_event(platform: Platform) -> None:
    grain = new_grain(platform, "Busy export")
    var = platform.var_dir(grain.grain_id)
    block = os.urandom(8 * 1024 * 1024)
    for i in range(30):
        (var / f"p{i}").write_bytes(block[i:] + block[:i])
    services = platform.stack.services()
    metrics_addr = services["backup"]["metrics"]
    nats_url = platform.stack.nats_url()
    before = failed_runs(metrics_addr)

    async def run() -> list[bpb.BackupTask]:
        nc = await nats.connect(nats_url)
        got: list[bpb.BackupTask] = []
        sub = await nc.subscribe("grainhouse.backup.run.failed")
        await nc.flush()  # the subscription is live before anything can fail
        # Two backups of one grain at once: grainmgr exports a grain once at a time, so the
        # second fails ("busy") while the first runs.
        req = bpb.CreateBackupRequest(grain_id=grain.grain_id, owner_account_id=OWNER)
        first = platform.backup.CreateBackup(req)
        second = platform.backup.CreateBackup(req)
        tasks = [wait_task(platform, t.task_id) for t in (first, second)]
        try:
            msg = await sub.next_msg(timeout=30)
            got.append(bpb.BackupTask.FromString(msg.data))
            assert msg.headers and msg.headers.get(requestid.HEADER)
        finally:
            await nc.close()
        return tasks + got

    first, second, event = asyncio.run(run())
    states = sorted([first.state, second.state])
    assert states == [bpb.TASK_STATE_SUCCEEDED, bpb.TASK_STATE_FAILED]
    failed = first if first.state == bpb.TASK_STATE_FAILED else second
    assert failed.error.message.startswith("export failed")
    assert failed.error.retryable and not failed.backup_id
    assert event.task_id == failed.task_id and event.grain_id == grain.grain_id
    assert failed_runs(metrics_addr) == before + 1
