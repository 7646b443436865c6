"""Disk quota of a grain's /var: measured on the host, enforced by making /var read-only inside.

Owns: the measurement of a storage tree's disk use and the read-only/read-write state of the
`/var` mount inside a running grain's mount namespace.
Trusts: the grain's init pid given by the fork server (its namespaces are the grain's).
Never: follows symlinks while measuring; changes any mount other than the grain's `/var`.

Why this way: project quotas need a filesystem mounted with them (ours is not) and a loop
image cannot be mounted in a user namespace. So the fork server measures periodically and,
when a grain goes over, remounts its `/var` read-only from a helper that joins the grain's
user and mount namespaces; writes then fail with EROFS until usage is back under the quota
(e.g. the operator raised it). RLIMIT_FSIZE (= the quota) stops one huge write between
two measurements. TODO(perf): measuring walks the tree; large grains want an inotify or
fanotify-based counter.
"""

from __future__ import annotations

import os
import stat

from grainhouse_grainmgr import syscalls as sc


def measure(root: str) -> int:
    """Bytes allocated on disk under `root` (blocks, so sparse files count what they use)."""
    total = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue  # vanished or unreadable while walking: count what we can
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


def set_var_read_only(init_pid: int, read_only: bool) -> None:
    """Remount /var of the grain whose init is `init_pid`. Forks a helper; raises OSError."""
    user_ns = os.open(f"/proc/{init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    mnt_ns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(err_r)
            sc.setns(user_ns)  # needs a single-threaded caller: the fork server is
            sc.setns(mnt_ns)
            flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NODEV
            current = os.statvfs("/var").f_flag
            for st_flag, ms_flag in (
                (os.ST_NOEXEC, sc.MS_NOEXEC),
                (os.ST_NOATIME, sc.MS_NOATIME),
                (os.ST_NODIRATIME, sc.MS_NODIRATIME),
                (os.ST_RELATIME, sc.MS_RELATIME),
            ):
                if current & st_flag:
                    flags |= ms_flag
            if read_only:
                flags |= sc.MS_RDONLY
            sc.mount(None, "/var", None, flags)
        except BaseException as exc:
            os.write(err_w, str(exc).encode()[:500])
            code = 1
        os._exit(code)
    os.close(err_w)
    os.close(user_ns)
    os.close(mnt_ns)
    message = os.read(err_r, 1000)
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(f"remounting /var of pid {init_pid}: {message.decode(errors='replace')}")
