"""Benchmark: backup and restore of a 1 GiB grain with 10,000 files, against zip -r and unzip.

Runs a whole platform (`grainhouse up`) in a temporary directory, fills one grain's /var with
10,000 files (half incompressible, half text-like; 1 GiB in all), then measures in one run:
- ours, backup: CreateBackup until the task SUCCEEDED (grainmgr freezes the grain and streams
  its /var in place over gRPC, the ZIP with per-file SHA-256, the archive written and fsynced);
- ours, restore: RestoreBackup of the stored backup until SUCCEEDED (hard link out of storage;
  one read of the archive by the confined validator, which checks every entry and hands the
  checked bytes on, pipelined into grainmgr's import, which writes the new grain; the grain
  is only made once the validator's verdict is in);
- baseline: `zip -r -q` of the same directory, and `unzip -q` of that zip into a new one.
Throughput is grain bytes / seconds. After one untimed round of each, restore and unzip
alternate `--rounds` times in A-B, B-A order (each restore's grain and each unzip's output
deleted again) and the medians are compared: on a shared machine the load
changes from minute to minute, and one unzip measured minutes before one restore says more
about the neighbours than about us. Each restore also reports the CPU seconds each stage spent
(`restore_cpu_s`: the backup service, its validator children, grainmgr; medians over the rounds;
`restore_sys_s`: the part spent in the kernel) next to unzip's own, so a slow round can be told
apart from a busy machine (`load_1m`). On ext4 without a journal, creating a file costs far
more when many inodes near it were deleted in the last minutes (the kernel skips them one by
one): restore and unzip both pay it, and the system seconds show how much.
Prints one JSON object on stdout. Needs `zip`, `unzip`.
Usage: python bench/bench_backup.py [--mib 1024] [--files 10000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import backup_pb2_grpc, grainmgr_pb2_grpc
from grainhouse_proto import grainmgr_pb2 as gpb

ROOT = Path(__file__).resolve().parents[1]
GRAINHOUSE = str(Path(sys.executable).parent / "grainhouse")
OWNER = "bench-owner"


def fill(var: Path, total: int, files: int) -> None:
    size = total // files
    noise = os.urandom(size + 4096)
    words = (b"grain backup benchmark line %d of text-like data\n" * 4096)[: size + 4096]
    for i in range(files):
        d = var / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        src = noise if i % 2 else words
        (d / f"f{i:05d}").write_bytes(src[i % 4096 : i % 4096 + size])


def start(root: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAINHOUSE_")}
    env["GRAINHOUSE_GRAINMGR_REGISTER_WITH_AUTH"] = "false"
    env["GRAINHOUSE_GRAINMGR_GRAIN_VAR_QUOTA_BYTES"] = str(4 * 1024**3)
    log = (root / "up.log").open("wb")
    proc = subprocess.Popen(
        [GRAINHOUSE, "up", "--data-dir", str(root / "var"), "--http-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while b"Grainhouse is ready at" not in (root / "up.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("grainhouse up did not start")
        time.sleep(0.2)
    return proc


def wait(backup: backup_pb2_grpc.BackupStub, task_id: str) -> bpb.BackupTask:
    while True:
        task = backup.GetTask(bpb.GetTaskRequest(task_id=task_id, owner_account_id=OWNER))
        if task.state in (bpb.TASK_STATE_SUCCEEDED, bpb.TASK_STATE_FAILED):
            if task.state == bpb.TASK_STATE_FAILED:
                raise SystemExit(f"task failed: {task.error.message}")
            return task
        time.sleep(0.05)


def timed(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and system seconds of one command."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed")
    return time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_stime


def cpu(pid: int) -> tuple[float, float, float, float]:
    """A process's own CPU and system seconds, then those of the children it reaped."""
    fields = [
        int(f) for f in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]
    ]
    utime, stime, cutime, cstime = (f / os.sysconf("SC_CLK_TCK") for f in fields)
    return utime + stime, stime, cutime + cstime, cstime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if not (shutil.which("zip") and shutil.which("unzip")):
        raise SystemExit("needs zip and unzip (apt-get install -y zip unzip)")
    root = Path(tempfile.mkdtemp(prefix="gh-bench-backup-", dir="/tmp"))
    root.chmod(0o711)
    proc = None
    try:
        proc = start(root)
        status = subprocess.run(
            [GRAINHOUSE, "status", "--data-dir", str(root / "var"), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        services = json.loads(status.stdout)["services"]
        grainmgr = grainmgr_pb2_grpc.GrainManagerStub(
            grpc.insecure_channel(services["grainmgr"]["grpc"])
        )
        backup = backup_pb2_grpc.BackupStub(grpc.insecure_channel(services["backup"]["grpc"]))
        pack_directory(ROOT / "examples" / "static-site", root / "s.pkg", generate_key(), level=0)
        data = (root / "s.pkg").read_bytes()

        def upload() -> Iterator[gpb.InstallPackageRequest]:
            yield gpb.InstallPackageRequest(
                metadata=gpb.InstallPackageMetadata(
                    size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
            )
            yield gpb.InstallPackageRequest(chunk=data)

        package = grainmgr.InstallPackage(upload(), timeout=120)
        grain = grainmgr.CreateGrain(
            gpb.CreateGrainRequest(app_id=package.app_id, owner_account_id=OWNER)
        )
        var = next((root / "var").glob(f"*/grains/{grain.grain_id}/var"))
        total = args.mib * 1024 * 1024
        fill(var, total, args.files)
        subprocess.run(["sync"], check=True)
        grain_bytes = sum(p.stat().st_size for p in var.rglob("*") if p.is_file())

        # Baseline first, then ours, on the same data (the page cache is warm for both).
        work = root / "baseline"
        work.mkdir()
        zip_s, _, _ = timed(["zip", "-r", "-q", str(work / "b.zip"), "."], var)
        zip_size = (work / "b.zip").stat().st_size

        t = time.perf_counter()
        task = backup.CreateBackup(
            bpb.CreateBackupRequest(grain_id=grain.grain_id, owner_account_id=OWNER)
        )
        task = wait(backup, task.task_id)
        backup_s = time.perf_counter() - t
        info = backup.ListBackups(bpb.ListBackupsRequest(owner_account_id=OWNER)).backups[0]

        pids = {name: services[name]["pid"] for name in ("backup", "grainmgr")}
        unzips, restores, loads = [], [], []
        stages: dict[str, list[float]] = {"backup": [], "validator": [], "grainmgr": []}
        kernel: dict[str, list[float]] = {"backup": [], "validator": [], "grainmgr": []}
        unzip_cpu, unzip_sys = [], []

        def run_unzip(record: bool) -> None:
            (work / "out").mkdir()
            unzip = ["unzip", "-q", str(work / "b.zip"), "-d", str(work / "out")]
            wall, used, sys_s = timed(unzip, work)
            shutil.rmtree(work / "out")
            if record:
                unzips.append(wall)
                unzip_cpu.append(used)
                unzip_sys.append(sys_s)

        def run_restore(record: bool) -> None:
            before = {name: cpu(pid) for name, pid in pids.items()}
            t = time.perf_counter()
            restore = backup.RestoreBackup(
                iter(
                    [
                        bpb.RestoreBackupRequest(
                            options=bpb.RestoreOptions(
                                owner_account_id=OWNER, backup_id=task.backup_id
                            )
                        )
                    ]
                )
            )
            restored = wait(backup, restore.task_id)
            took = time.perf_counter() - t
            after = {name: cpu(pid) for name, pid in pids.items()}
            grainmgr.DeleteGrain(
                gpb.DeleteGrainRequest(grain_id=restored.grain_id, skip_trash=True), timeout=120
            )
            if not record:
                return
            restores.append(took)
            for name, pid_name, at in (
                ("backup", "backup", 0),
                ("validator", "backup", 2),
                ("grainmgr", "grainmgr", 0),
            ):
                stages[name].append(after[pid_name][at] - before[pid_name][at])
                kernel[name].append(after[pid_name][at + 1] - before[pid_name][at + 1])

        # One untimed round of each first: every timed round then writes where 10,000 files
        # were just deleted (see the docstring on ext4), not round 1 of one side only.
        run_unzip(False)
        run_restore(False)
        for i in range(max(1, args.rounds)):
            loads.append(os.getloadavg()[0])
            # A-B, B-A, …: neither side always runs right after the other's mass delete.
            if i % 2 == 0:
                run_unzip(True)
                run_restore(True)
            else:
                run_restore(True)
                run_unzip(True)
        shutil.rmtree(work)
        unzip_s, restore_s = statistics.median(unzips), statistics.median(restores)

        mb = grain_bytes / 1e6
        result = {
            "grain_bytes": grain_bytes,
            "files": args.files,
            "backup_mb_s": round(mb / backup_s, 1),
            "zip_r_mb_s": round(mb / zip_s, 1),
            "backup_vs_zip": round(zip_s / backup_s, 3),
            "restore_mb_s": round(mb / restore_s, 1),
            "unzip_mb_s": round(mb / unzip_s, 1),
            "restore_vs_unzip": round(unzip_s / restore_s, 3),
            "restore_vs_unzip_each": [
                round(u / r, 3) for u, r in zip(unzips, restores, strict=True)
            ],
            "restore_s_each": [round(r, 2) for r in restores],
            "unzip_s_each": [round(u, 2) for u in unzips],
            "restore_cpu_s": {k: round(statistics.median(v), 2) for k, v in stages.items()},
            "restore_sys_s": {k: round(statistics.median(v), 2) for k, v in kernel.items()},
            "unzip_cpu_s": round(statistics.median(unzip_cpu), 2),
            "unzip_sys_s": round(statistics.median(unzip_sys), 2),
            "load_1m": [round(x, 2) for x in loads],
            "archive_bytes": info.size_bytes,
            "zip_bytes": zip_size,
            "goal": ">= 0.9 x each",
        }
        print(json.dumps(result))
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
