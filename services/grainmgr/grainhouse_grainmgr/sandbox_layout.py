"""The host skeleton every grain's root is made of, built once per launcher start.

Owns: the directories under the launcher's runtime dir (`root`, `etc`, `dev`: mount points,
symlinks and a copied /etc, world-readable, nothing secret), and the names a grain sees
(its uid and gid, hostname, /tmp and /dev/shm, the runtime directories and devices).
Trusts: the operator's extra read-only mounts (settings; checked here to be absolute and
not under a place a grain mount would hide); the host's /etc (only world-readable entries
are copied).
Never: runs in a grain's processes (they only mount what this built); copies a file that is
not world-readable; creates anything outside the runtime dir.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass

GRAIN_TMP = "/tmp"  # noqa: S108  (a path inside the grain's root: its own private tmpfs)
GRAIN_SHM = "/dev/shm"  # noqa: S108  (same: the grain's own small tmpfs)
GRAIN_UID = 1000
GRAIN_GID = 1000
HOSTNAME = "sandbox"

# The read-only platform runtime. Debian 12 has merged /usr: /bin, /lib... are symlinks,
# recreated as symlinks inside.
RUNTIME_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The few /etc entries a runtime needs, copied (world-readable entries only) into the
# launcher's own etc directory at start; passwd/group/hosts/hostname are written fresh.
ETC_FROM_HOST = (
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
)
DEVICES = ("null", "zero", "random", "urandom")
ETC_WRITTEN = {
    "passwd": f"grain:x:{GRAIN_UID}:{GRAIN_GID}:grain:/var:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"grain:x:{GRAIN_GID}:\nnogroup:x:65534:\n",
    "hosts": f"127.0.0.1 localhost {HOSTNAME}\n::1 localhost ip6-localhost\n",
    "hostname": f"{HOSTNAME}\n",
}


@dataclass(frozen=True)
class Layout:
    """Host directories every grain's root is made of (mount points only, nothing secret).

    Mount points are prepared on the host so that a grain's init creates no file while it
    builds its root: it needs no uid mapping for that, so a spare can do it in advance.
    """

    root: str  # skeleton of "/": mount points and the /bin -> usr/bin style symlinks
    etc: str  # the grains' /etc
    dev: str  # skeleton of /dev: empty files to bind devices on, shm/, fd and std* links
    runtime: tuple[tuple[str, str], ...]  # (host path, path inside) bound read-only


def _extra_target(entry: str | list[str] | tuple[str, str]) -> tuple[str, str]:
    """An extra read-only mount: a host path (same place inside) or a (host, inside) pair."""
    host_path, inside = (entry, entry) if isinstance(entry, str) else (entry[0], entry[1])
    if not os.path.isabs(host_path) or not os.path.isabs(inside):
        raise ValueError(f"extra read-only mount {entry!r}: paths must be absolute")
    if inside in (GRAIN_TMP, "/var", "/opt/app", "/proc", "/dev") or inside.startswith(
        (GRAIN_TMP + "/", "/var/", "/opt/app/", "/proc/", "/dev/")
    ):
        # These places get their own mounts later and would hide (or be hidden by) it.
        raise ValueError(
            f"extra read-only mount {inside}: it lies under a grain mount; "
            "mount it elsewhere with a (host, inside) pair"
        )
    return os.path.normpath(host_path), os.path.normpath(inside)


def prepare_layout(
    runtime_dir: str, extra_ro: Sequence[str | list[str] | tuple[str, str]]
) -> Layout:
    """Build (or rebuild) the skeleton under `runtime_dir`; world-readable, root's."""
    root = os.path.join(runtime_dir, "root")
    etc = os.path.join(runtime_dir, "etc")
    dev = os.path.join(runtime_dir, "dev")
    for path in (root, etc, dev):
        if os.path.isdir(path):
            shutil.rmtree(path)
        _mkdir(path)
    runtime: list[tuple[str, str]] = []
    for host_path in RUNTIME_DIRS:
        if os.path.islink(host_path):
            os.symlink(os.readlink(host_path), root + host_path)
        elif os.path.isdir(host_path):
            _mkdir(root + host_path)
            runtime.append((host_path, host_path))
    for entry in extra_ro:
        host_path, inside = _extra_target(entry)
        os.makedirs(os.path.dirname(root + inside), 0o755, exist_ok=True)
        if os.path.isdir(host_path):
            os.makedirs(root + inside, 0o755, exist_ok=True)
        else:
            _touch(root + inside, 0o644)
        runtime.append((host_path, inside))
    for sub in ("etc", "opt", "opt/app", "var", GRAIN_TMP[1:], "dev", "proc"):
        os.makedirs(os.path.join(root, sub), 0o755, exist_ok=True)
    for name in DEVICES:
        _touch(os.path.join(dev, name), 0o666)
    _mkdir(os.path.join(dev, "shm"))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, os.path.join(dev, name))
    _prepare_etc(etc)
    return Layout(root, etc, dev, tuple(runtime))


def _mkdir(path: str) -> None:
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)  # noqa: S103  (a mount point: grains of other uids must reach it)


def _touch(path: str, mode: int) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, mode))
    os.chmod(path, mode)


def _prepare_etc(target: str) -> None:
    """The grains' /etc: copied once rather than bound file by file at every start.

    Refreshed at every launcher start (a host library update reaches ld.so.cache then).
    """
    for name, text in ETC_WRITTEN.items():
        with open(os.path.join(target, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(target, name), 0o644)
    for host_path in ETC_FROM_HOST:
        if not os.path.lexists(host_path):
            continue
        dest = os.path.join(target, os.path.relpath(host_path, "/etc"))
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        if os.path.islink(host_path):
            os.symlink(os.readlink(host_path), dest)
        elif os.path.isdir(host_path):
            shutil.copytree(host_path, dest, symlinks=True, ignore=_not_world_readable)
        elif os.stat(host_path).st_mode & stat.S_IROTH:
            shutil.copyfile(host_path, dest)
            os.chmod(dest, 0o644)


def _not_world_readable(directory: str, names: list[str]) -> list[str]:
    skipped = []
    for name in names:
        st = os.lstat(os.path.join(directory, name))
        if not stat.S_ISLNK(st.st_mode) and not st.st_mode & stat.S_IROTH:
            skipped.append(name)  # e.g. private keys: never copied where grains can read
    return skipped
