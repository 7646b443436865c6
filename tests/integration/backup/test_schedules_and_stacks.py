"""Scheduled backups as durable jobs, and a backup restored on a second, separate stack."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest

from grainhouse_proto import backup_pb2 as bpb

from .conftest import (
    OWNER,
    Platform,
    Stack,
    backup_now,
    connect,
    download,
    make_data_root,
    new_grain,
    restore_upload,
    running_platform,
    tree,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backup-stack")]


def schedule_backups(p: Platform, grain_id: str, schedule_id: str) -> list[bpb.BackupInfo]:
    while True:
        try:
            found = p.backup.ListBackups(
                bpb.ListBackupsRequest(owner_account_id=OWNER, grain_id=grain_id), timeout=10
            ).backups
            break
        except grpc.RpcError as exc:  # the killed service is being restarted
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            time.sleep(0.3)
    return [b for b in found if b.schedule_id == schedule_id]


def test_schedule_validation(platform: Platform) -> None:
    grain = new_grain(platform, "Sched")
    with pytest.raises(grpc.RpcError) as info:
        platform.backup.CreateSchedule(
            bpb.CreateScheduleRequest(
                grain_id=grain.grain_id,
                owner_account_id=OWNER,
                frequency=bpb.FREQUENCY_DAILY,
                retention=bpb.Retention(),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "retention" in (info.value.details() or "")
    made = platform.backup.CreateSchedule(
        bpb.CreateScheduleRequest(
            all_grains_of_account_id=OWNER,
            owner_account_id=OWNER,
            frequency=bpb.FREQUENCY_WEEKLY,
            retention=bpb.Retention(keep_weekly=4),
        )
    )
    assert made.all_grains_of_account_id == OWNER and made.HasField("next_run_at")
    listed = platform.backup.ListSchedules(bpb.ListSchedulesRequest(owner_account_id=OWNER))
    assert made.schedule_id in [s.schedule_id for s in listed.schedules]
    platform.backup.DeleteSchedule(
        bpb.DeleteScheduleRequest(schedule_id=made.schedule_id, owner_account_id=OWNER)
    )


def test_list_schedules_by_grain_checks_the_grain_is_the_callers(platform: Platform) -> None:
    alice, bob = "lister-alice", "lister-bob"
    mine = new_grain(platform, "Alice's", owner=alice)
    theirs = new_grain(platform, "Bob's", owner=bob)
    made: list[tuple[str, str]] = []

    def schedule(owner: str, **scope: str) -> str:
        row = platform.backup.CreateSchedule(
            bpb.CreateScheduleRequest(
                owner_account_id=owner,
                frequency=bpb.FREQUENCY_WEEKLY,
                retention=bpb.Retention(keep_last=1),
                **scope,
            )
        )
        made.append((row.schedule_id, owner))
        return str(row.schedule_id)

    def listed(owner: str, grain_id: str, **more: bool) -> set[str]:
        reply = platform.backup.ListSchedules(
            bpb.ListSchedulesRequest(owner_account_id=owner, grain_id=grain_id, **more)
        )
        return {s.schedule_id for s in reply.schedules}

    try:
        a_grain = schedule(alice, grain_id=mine.grain_id)
        a_all = schedule(alice, all_grains_of_account_id=alice)
        b_grain = schedule(bob, grain_id=theirs.grain_id)
        b_all = schedule(bob, all_grains_of_account_id=bob)
        assert listed(alice, mine.grain_id) == {a_grain, a_all}
        assert listed(bob, theirs.grain_id) == {b_grain, b_all}
        # Someone else's grain (or none at all) is NOT_FOUND: nothing about it leaks.
        for owner, grain_id in ((alice, theirs.grain_id), (bob, mine.grain_id), (alice, "0" * 32)):
            with pytest.raises(grpc.RpcError) as info:
                listed(owner, grain_id)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, (owner, grain_id)
        # Admin view: every owner, still only the schedules covering that grain.
        assert listed("", theirs.grain_id, all_owners=True) == {b_grain, b_all}
    finally:
        for schedule_id, owner in made:
            platform.backup.DeleteSchedule(
                bpb.DeleteScheduleRequest(schedule_id=schedule_id, owner_account_id=owner)
            )


def test_scheduled_job_killed_mid_run_completes_once(platform: Platform) -> None:
    grain = new_grain(platform, "Scheduled")
    var = platform.var_dir(grain.grain_id)
    block = os.urandom(8 * 1024 * 1024)
    for i in range(60):  # ~480 MiB: a run long enough to be killed in the middle
        (var / f"part{i:02d}").write_bytes(block[i:] + block[:i])
    before = tree(var)
    schedule = platform.backup.CreateSchedule(
        bpb.CreateScheduleRequest(
            grain_id=grain.grain_id,
            owner_account_id=OWNER,
            frequency=bpb.FREQUENCY_HOURLY,  # the test stack runs every schedule every 30 s
            retention=bpb.Retention(keep_last=3),
        )
    )
    tmp = platform.stack.data_dir / "backup" / "tmp"
    deadline = time.monotonic() + 90
    while not any(p.name.endswith(".part") and p.stat().st_size > 0 for p in tmp.iterdir()):
        assert time.monotonic() < deadline, "the scheduled run never started"
        time.sleep(0.05)
    pid = int(platform.stack.services()["backup"]["pid"])
    os.kill(pid, signal.SIGKILL)  # mid-run: the archive is being written

    deadline = time.monotonic() + 120
    while not schedule_backups(platform, grain.grain_id, schedule.schedule_id):
        assert time.monotonic() < deadline, "the job did not complete after the restart"
        time.sleep(0.5)
    platform.backup.DeleteSchedule(
        bpb.DeleteScheduleRequest(schedule_id=schedule.schedule_id, owner_account_id=OWNER)
    )
    assert int(platform.stack.services()["backup"]["pid"]) != pid
    time.sleep(8)  # longer than the ack wait: a second delivery would have run by now
    made = schedule_backups(platform, grain.grain_id, schedule.schedule_id)
    assert len(made) == 1
    assert made[0].note.startswith("Scheduled hourly backup, slot ")
    assert [p for p in tmp.iterdir() if p.name.endswith(".part")] == []
    # And what it made restores to the grain's data.
    restored = platform.backup.RestoreBackup(
        iter(
            [
                bpb.RestoreBackupRequest(
                    options=bpb.RestoreOptions(owner_account_id=OWNER, backup_id=made[0].backup_id)
                )
            ]
        )
    )
    from .conftest import wait_task

    done = wait_task(platform, restored.task_id)
    assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
    assert tree(platform.var_dir(done.grain_id)) == before


def test_restore_on_a_second_stack(platform: Platform, tmp_path: Path) -> None:
    grain = new_grain(platform, "Travels")
    var = platform.var_dir(grain.grain_id)
    (var / "notes").mkdir()
    (var / "notes" / "a.md").write_text("from the first server ✓")
    before = tree(var)
    task = backup_now(platform, grain.grain_id)
    assert task.state == bpb.TASK_STATE_SUCCEEDED, task.error
    archive = tmp_path / "travel.zip"
    download(platform, task.backup_id, archive)

    with running_platform({}, platform.package_dir) as other:  # the same signed package
        assert (
            other.stack.services()["backup"]["grpc"] != platform.stack.services()["backup"]["grpc"]
        )
        done = restore_upload(other, archive, owner="owner-on-b")
        assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
        assert tree(other.var_dir(done.grain_id)) == before


def test_scheduled_job_survives_a_restart_of_the_whole_stack(tmp_path: Path) -> None:
    root = make_data_root()
    stack = Stack(
        root,
        {
            "GRAINHOUSE_BACKUP_SCHEDULE_PERIOD_OVERRIDE_SECONDS": "20",
            "GRAINHOUSE_BACKUP_SCHEDULER_INTERVAL_SECONDS": "1",
            "GRAINHOUSE_BACKUP_JOB_ACK_WAIT_SECONDS": "6",
        },
    )
    p = None
    try:
        stack.start()
        p = connect(stack, tmp_path)
        grain = new_grain(p, "Durable")
        var = p.var_dir(grain.grain_id)
        block = os.urandom(8 * 1024 * 1024)
        for i in range(40):
            (var / f"part{i:02d}").write_bytes(block[i:] + block[:i])
        before = tree(var)
        schedule = p.backup.CreateSchedule(
            bpb.CreateScheduleRequest(
                grain_id=grain.grain_id,
                owner_account_id=OWNER,
                frequency=bpb.FREQUENCY_HOURLY,  # every 20 s on this stack
                retention=bpb.Retention(keep_last=10),
            )
        )
        tmp = stack.data_dir / "backup" / "tmp"
        deadline = time.monotonic() + 60
        while not any(x.name.endswith(".part") for x in tmp.iterdir()):
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
        p.close()
        p = None
        stack.stop()  # the whole stack, mid-run: PostgreSQL, NATS and every service
        stack.start()
        p = connect(stack, tmp_path)
        deadline = time.monotonic() + 120
        while not schedule_backups(p, grain.grain_id, schedule.schedule_id):
            assert time.monotonic() < deadline, "the job did not complete after the restart"
            time.sleep(0.5)
        p.backup.DeleteSchedule(
            bpb.DeleteScheduleRequest(schedule_id=schedule.schedule_id, owner_account_id=OWNER)
        )
        time.sleep(8)  # longer than the ack wait: any redelivery has run by now
        made = schedule_backups(p, grain.grain_id, schedule.schedule_id)
        # One backup per slot, never two (the note names the slot).
        assert len({b.note for b in made}) == len(made) >= 1
        from .conftest import wait_task

        restored = p.backup.RestoreBackup(
            iter(
                [
                    bpb.RestoreBackupRequest(
                        options=bpb.RestoreOptions(
                            owner_account_id=OWNER, backup_id=made[-1].backup_id
                        )
                    )
                ]
            )
        )
        done = wait_task(p, restored.task_id)
        assert done.state == bpb.TASK_STATE_SUCCEEDED, done.error
        assert tree(p.var_dir(done.grain_id)) == before
    finally:
        if p is not None:
            p.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
