"""A real platform (`grainhouse up`) for the backup tests, and helpers to drive Backup over gRPC."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import backup_pb2 as bpb
from grainhouse_proto import backup_pb2_grpc, common_pb2, grainmgr_pb2_grpc
from grainhouse_proto import grainmgr_pb2 as gpb
from tests.support import stack as support

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples"
CHUNK = 1024 * 1024
OWNER = "owner-backup-1"


def make_data_root() -> Path:
    return support.make_data_root("gh-backup-")


class Stack(support.Stack):
    defaults: ClassVar[dict[str, str]] = {
        "GRAINHOUSE_GRAINMGR_REGISTER_WITH_AUTH": "false",  # owners are made-up ids
        "GRAINHOUSE_GRAINMGR_GRAIN_VAR_QUOTA_BYTES": str(3 * 1024**3),
    }


@dataclass
class Platform:
    stack: Stack
    grainmgr: grainmgr_pb2_grpc.GrainManagerStub
    backup: backup_pb2_grpc.BackupStub
    package: gpb.InstallPackageResponse
    channels: list[grpc.Channel]
    package_dir: Path

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def var_dir(self, grain_id: str) -> Path:
        found = list(self.stack.data_dir.glob(f"*/grains/{grain_id}/var"))
        assert len(found) == 1, found
        return found[0]


def wait_serving(call: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def connect(stack: Stack, package_dir: Path) -> Platform:
    services = stack.services()
    gch = grpc.insecure_channel(services["grainmgr"]["grpc"])
    bch = grpc.insecure_channel(services["backup"]["grpc"])
    grainmgr = grainmgr_pb2_grpc.GrainManagerStub(gch)
    backup = backup_pb2_grpc.BackupStub(bch)
    wait_serving(lambda: grainmgr.ListPackages(gpb.ListPackagesRequest(), timeout=5))
    wait_serving(
        lambda: backup.ListBackups(bpb.ListBackupsRequest(owner_account_id="x"), timeout=5)
    )
    pkg = package_dir / "static.pkg"
    if not pkg.exists():
        pack_directory(EXAMPLES / "static-site", pkg, generate_key(), level=0)
    data = pkg.read_bytes()

    def upload() -> Iterator[gpb.InstallPackageRequest]:
        yield gpb.InstallPackageRequest(
            metadata=gpb.InstallPackageMetadata(
                size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
        for i in range(0, len(data), CHUNK):
            yield gpb.InstallPackageRequest(chunk=data[i : i + CHUNK])

    package = grainmgr.InstallPackage(upload(), timeout=120)
    return Platform(stack, grainmgr, backup, package, [gch, bch], package_dir)


@contextlib.contextmanager
def running_platform(env: dict[str, str], package_dir: Path) -> Iterator[Platform]:
    """A started stack (with `env`) and its clients; stopped and removed on the way out."""
    root = make_data_root()
    stack = Stack(root, env)
    plat = None
    try:
        stack.start()
        plat = connect(stack, package_dir)
        yield plat
    finally:
        if plat is not None:
            plat.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    env = {
        "GRAINHOUSE_BACKUP_SCHEDULE_PERIOD_OVERRIDE_SECONDS": "30",
        "GRAINHOUSE_BACKUP_SCHEDULER_INTERVAL_SECONDS": "1",
        "GRAINHOUSE_BACKUP_JOB_ACK_WAIT_SECONDS": "6",
    }
    with running_platform(env, tmp_path_factory.mktemp("pkg")) as plat:
        yield plat


def new_grain(p: Platform, title: str = "Backup me", owner: str = OWNER) -> gpb.Grain:
    return p.grainmgr.CreateGrain(
        gpb.CreateGrainRequest(app_id=p.package.app_id, owner_account_id=owner, title=title),
        timeout=30,
    )


def wait_task(
    p: Platform, task_id: str, owner: str = OWNER, timeout: float = 240
) -> bpb.BackupTask:
    deadline = time.monotonic() + timeout
    while True:
        task = p.backup.GetTask(
            bpb.GetTaskRequest(task_id=task_id, owner_account_id=owner), timeout=10
        )
        if task.state in (bpb.TASK_STATE_SUCCEEDED, bpb.TASK_STATE_FAILED):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task still {bpb.TaskState.Name(task.state)}")
        time.sleep(0.2)


def backup_now(p: Platform, grain_id: str, owner: str = OWNER) -> bpb.BackupTask:
    task = p.backup.CreateBackup(
        bpb.CreateBackupRequest(grain_id=grain_id, owner_account_id=owner), timeout=30
    )
    return wait_task(p, task.task_id, owner)


def download(
    p: Platform, backup_id: str, dest: Path, owner: str = OWNER, offset: int = 0, length: int = 0
) -> bpb.DownloadHeader:
    header = None
    with dest.open("ab") as out:
        for chunk in p.backup.DownloadBackup(
            bpb.DownloadBackupRequest(
                backup_id=backup_id, owner_account_id=owner, offset=offset, length=length
            ),
            timeout=300,
        ):
            if chunk.WhichOneof("part") == "header":
                header = chunk.header
            else:
                out.write(chunk.data)
    assert header is not None
    return header


def restore_upload(p: Platform, path: Path, owner: str = OWNER, **options: Any) -> bpb.BackupTask:
    size = path.stat().st_size

    def requests() -> Iterator[bpb.RestoreBackupRequest]:
        yield bpb.RestoreBackupRequest(
            options=bpb.RestoreOptions(owner_account_id=owner, upload_size_bytes=size, **options)
        )
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield bpb.RestoreBackupRequest(chunk=chunk)

    task = p.backup.RestoreBackup(requests(), timeout=300)
    return wait_task(p, task.task_id, owner)


def tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, sha256 or link target) of every entry under root."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            if full.is_symlink():
                out[rel] = ("link", 0, os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", st.st_mode & 0o777, "")
            else:
                digest = hashlib.sha256()
                with full.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                out[rel] = ("file", st.st_mode & 0o777, digest.hexdigest())
    return out


def install_writer(p: Platform, tmp_path: Path) -> gpb.InstallPackageResponse:
    pack_directory(HERE / "writerapp", tmp_path / "writer.pkg", generate_key(), level=0)
    data = (tmp_path / "writer.pkg").read_bytes()

    def upload() -> Iterator[gpb.InstallPackageRequest]:
        yield gpb.InstallPackageRequest(
            metadata=gpb.InstallPackageMetadata(
                size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
        for i in range(0, len(data), CHUNK):
            yield gpb.InstallPackageRequest(chunk=data[i : i + CHUNK])

    return p.grainmgr.InstallPackage(upload(), timeout=120)


def start_writer(p: Platform, tmp_path: Path, title: str) -> tuple[gpb.Grain, Path]:
    """A writer grain, created and opened (so it runs and keeps writing); and its /var."""
    package = install_writer(p, tmp_path)
    grain = p.grainmgr.CreateGrain(
        gpb.CreateGrainRequest(app_id=package.app_id, owner_account_id=OWNER, title=title),
        timeout=30,
    )
    p.grainmgr.OpenSession(
        gpb.OpenSessionRequest(
            grain_id=grain.grain_id,
            identity=common_pb2.AppIdentity(user_id="u" * 32, display_name="U"),
            permissions=["view", "edit"],
            session_type=gpb.SESSION_TYPE_NORMAL,
            tab_id="t1",
            base_path="http://ui-test.localhost",
        ),
        timeout=60,
    )
    return grain, p.var_dir(grain.grain_id)


def latest(var: Path) -> int:
    try:
        return int((var / "latest").read_text())
    except (OSError, ValueError):
        return 0
