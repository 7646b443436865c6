"""The grain's init (PID 1 of its pid namespace): builds the root, locks itself down, execs.

Owns: the init's checklist, in order: die with the outer process, the half of the root that
does not depend on the grain (`_premount`, which a spare runs ahead), the uid map handshake
and the switch to the grain's uid, the package, storage and tmpfs mounts, pivot_root, a
read-only root, rlimits, capabilities (the bounding set already emptied in `_premount`),
no_new_privs, Landlock, seccomp (last), then the optional child and the exec.
Trusts: the `Layout` built at launcher start; the `Plan` (from the fork server, directly or
over a spare's socket); `admission` for the package and storage paths (re-checked by fd).
Never: returns (it reports on the report pipe and exits 127, or execs, or becomes the
bridge); runs Python code after the seccomp filter is loaded, except `posix_spawn` of the
child and then `execve` or the bridge (SpawnSpec.bridge_in_process: our own code, which
runs under the same filter either way); imports a module in the child that the fork server
did not import first (`seccomp_installer`, Landlock and the bridge are imported at
fork-server start).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import socket
import struct
from collections.abc import Callable
from typing import NoReturn

from grainhouse_grainmgr import syscalls as sc
from grainhouse_grainmgr.sandbox_layout import (
    DEVICES,
    GRAIN_GID,
    GRAIN_SHM,
    GRAIN_TMP,
    GRAIN_UID,
    HOSTNAME,
    RUNTIME_DIRS,
    Layout,
)
from grainhouse_grainmgr.sandbox_plan import Plan, plan_from_wire
from grainhouse_grainmgr.sandbox_steps import (
    FD_GO,
    FD_LIFELINE,
    FD_PACKAGE,
    FD_REPORT,
    FD_VAR,
    StepError,
    arrange_fds,
    describe,
    report,
    step,
)
from grainhouse_grainmgr.spec import CHILD_PID_ENV

# The bridge's entry (bridge.run_in_init), set by the fork server once it imported the bridge
# and pycapnp; None: plans that ask for the bridge in process exec it instead.
RUN_BRIDGE: Callable[[dict[str, str], int], NoReturn] | None = None

# /proc/<pid>/comm of a bridge run in the init (ps, top, tests/support/procs.py find it so).
BRIDGE_NAME = "gh-bridge"

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _open_dir_at(path: str, target: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    # admission checked there is no symlink on the way; check again now that it is open,
    # so a swap between the check and the open cannot redirect the mount.
    seen = os.readlink(f"/proc/self/fd/{fd}")
    if seen != path:
        raise StepError(f"{path!r} changed under us (now {seen!r})")
    os.dup2(fd, target, inheritable=False)
    os.close(fd)


def run_init(
    layout: Layout,
    plan: Plan | None,
    spare: tuple[socket.socket, bytes | None] | None,
    lifeline: int,
) -> None:
    try:
        _init(layout, plan, spare, lifeline)
    except BaseException as exc:
        report(f"E{describe(exc)}")
    os._exit(127)


def _check_lifeline(lifeline: int) -> None:
    os.set_blocking(lifeline, False)
    try:
        if os.read(lifeline, 1) == b"":
            os._exit(1)  # the outer process died before we asked to die with it
    except BlockingIOError:
        pass


def _init(
    layout: Layout,
    plan: Plan | None,
    spare: tuple[socket.socket, bytes | None] | None,
    lifeline: int,
) -> None:
    """PID 1 of the grain. Builds the root, locks itself down, execs. Never returns."""
    with step("die with the outer process"):
        # Our copy of the write end sits at FD_LIFELINE: replace it by the read end, so the
        # outer process holds the only writer and arrange_fds keeps the lifeline.
        os.dup2(lifeline, FD_LIFELINE, inheritable=False)
        os.close(lifeline)
        lifeline = FD_LIFELINE
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _check_lifeline(lifeline)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")  # give the grain back to the OOM killer
    _premount(layout)
    if spare is not None:
        sock, program = spare
        sock.send(b"R")
        received = plan_from_wire(sock, program)
        if received is None:
            os._exit(0)
        plan = received
        with step("close inherited fds"):
            arrange_fds(plan)  # also closes the spare socket
    assert plan is not None
    report("U")
    with step("wait for uid/gid maps"):
        if os.read(FD_GO, 1) != b"G":
            raise StepError("the fork server gave up while mapping uids")
        os.close(FD_GO)
    with step("open the grain's package and storage"):
        # By fd, opened in our own mount namespace (a bind source must be in it) and before
        # the uid change (in root mode the path may be reachable by root only).
        _open_dir_at(plan.package_dir, FD_PACKAGE)
        _open_dir_at(plan.var_dir, FD_VAR)
    with step(f"become uid {GRAIN_UID}"):
        os.setresgid(GRAIN_GID, GRAIN_GID, GRAIN_GID)
        os.setresuid(GRAIN_UID, GRAIN_UID, GRAIN_UID)
        # A uid change makes the process non-dumpable (which hands /proc/self to host root)
        # and clears the parent-death signal: restore both, then check we missed nothing.
        sc.prctl(sc.PR_SET_DUMPABLE, 1)
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _check_lifeline(lifeline)
        os.close(lifeline)
    _finish(layout, plan)


def _premount(layout: Layout) -> None:
    """Everything of the new root that does not depend on the grain. Creates no file."""
    root = layout.root
    with step("make mount propagation private"):
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    with step("mount the new root"):
        sc.mount(root, root, None, sc.MS_BIND)  # pivot_root wants a mount point
    with step("mount the platform runtime read-only"):
        for host_path, inside in layout.runtime:
            _bind(host_path, root + inside, read_only=True)
    with step("mount /etc read-only"):
        _bind(layout.etc, root + "/etc", read_only=True)
    with step("build a minimal /dev"):
        _bind(layout.dev, root + "/dev", read_only=True)
        for name in DEVICES:
            # Device nodes made in a user namespace do not work (nodev superblock), so bind
            # the host's. No read-only remount: the nodes belong to host root, so the grain
            # can neither chmod nor replace them, and writing to them is what they are for.
            sc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, sc.MS_BIND)
    with step("mount a fresh /proc of the grain's pid namespace"):
        sc.mount("proc", root + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    with step("set the hostname"):
        socket.sethostname(HOSTNAME)
    with step("bring up loopback (the only interface)"):
        _loopback_up()
    with step("empty the capability bounding set"):
        # Here, not with the other capabilities in _finish: 41 drops cost ≈1.5 ms, which a
        # spare spends before its plan arrives. The effective set stays until _finish.
        sc.drop_bounding_set()


def _finish(layout: Layout, plan: Plan) -> None:
    root = layout.root
    if plan.bridge_in_process and RUN_BRIDGE is not None:
        with step("name the bridge"):
            sc.set_name(BRIDGE_NAME)  # its command line stays the fork server's
    with step("mount the app package read-only at /opt/app"):
        _bind(f"/proc/self/fd/{FD_PACKAGE}", root + "/opt/app", read_only=True)
    with step("mount the grain's storage read-write at /var"):
        _bind(f"/proc/self/fd/{FD_VAR}", root + "/var", read_only=plan.var_read_only)
        os.close(FD_PACKAGE)
        os.close(FD_VAR)
    with step("mount a private /tmp and /dev/shm"):
        for path, size in ((GRAIN_TMP, plan.tmp_bytes), (GRAIN_SHM, plan.shm_bytes)):
            flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_NOEXEC if path == GRAIN_SHM else 0)
            sc.mount("tmpfs", root + path, "tmpfs", flags, f"size={size},mode=1777")
    with step("pivot_root and detach the old root"):
        os.chdir(root)
        sc.pivot_root(".", ".")  # the old root ends up stacked under the new one...
        sc.umount2(".", sc.MNT_DETACH)  # ...and leaves with this
        os.chdir("/")
    with step("reopen stdin from the sandbox's /dev/null"):
        null = os.open("/dev/null", os.O_RDONLY)  # the host one's path no longer resolves
        os.dup2(null, 0)
        os.close(null)
    with step("make the root read-only"):
        sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _locked_flags("/"))
    with step("set rlimits"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.nofile, plan.nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if plan.fsize_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (plan.fsize_bytes, plan.fsize_bytes))
        if plan.nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (plan.nproc, plan.nproc))
        if plan.address_space_bytes:
            lim = plan.address_space_bytes
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    with step("drop every capability"):
        sc.drop_capabilities(bounding=False)  # the bounding set went in _premount
        if sc.in_bounding_set(sc.CAP_SYS_ADMIN):  # a tripwire: one call, not 41
            raise StepError("the capability bounding set is not empty")
    with step("set no_new_privs"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if plan.landlock:
        with step("apply the Landlock ruleset"):
            _landlock(layout)
    install = seccomp_installer() if plan.seccomp_program is not None else None
    with step("load the seccomp filter"):
        if install is not None and plan.seccomp_program is not None:
            install(plan.seccomp_program)
    env = plan.env
    in_process = plan.bridge_in_process and RUN_BRIDGE is not None
    if in_process:
        # Non-dumpable before the app exists: this image is the fork server's, and the app
        # runs with our uid; /proc/1 then belongs to the grain's root, which nothing in the
        # grain is (an open of /proc/1/mem is checked when it is made, so no window is left).
        # The app's own exec makes it dumpable again, for its own /proc/self.
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
    child = _start_child(plan) if plan.child_argv else 0
    if in_process and RUN_BRIDGE is not None:
        os.close(FD_REPORT)  # what the exec's close-on-exec would do: "started", to the server
        RUN_BRIDGE(env, child)
    if child:
        env = {**env, CHILD_PID_ENV: str(child)}
    try:
        # Replaces this process, which is what a launcher is for.
        os.execve(plan.argv[0], plan.argv, env)  # noqa: S606
    except OSError as exc:
        raise StepError(f"exec {plan.argv[0]} in the sandbox: {exc.strerror}") from exc


def _start_child(plan: Plan) -> int:
    """posix_spawn the grain's second program; its pid inside the grain, or 0 if that failed.

    It inherits every restriction, the seccomp filter included (posix_spawn is one call into
    libc: no Python runs in the child), in its own session, cwd /var, with fds 0-2 only (the
    report pipe is close-on-exec: the fork server's EOF then means both programs exec'd). If
    it cannot start, the first program is told nothing and, if it is the bridge, starts the
    app itself and reports the failure as it always did (one line here in the grain's log).
    """
    try:
        os.chdir("/var")
        try:
            return os.posix_spawn(
                plan.child_argv[0],
                plan.child_argv,
                plan.child_env,
                file_actions=[(os.POSIX_SPAWN_CLOSE, 3 + i) for i in range(len(plan.grant_fds))],
                setsid=True,
            )
        finally:
            os.chdir("/")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"[sandbox] cannot start {plan.child_argv[0]}: {exc.strerror}\n".encode())
        return 0


def _locked_flags(path: str) -> int:
    """Flags a bind remount must repeat: in a user namespace, dropping them is refused."""
    st = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in (
        (os.ST_NOSUID, sc.MS_NOSUID),
        (os.ST_NODEV, sc.MS_NODEV),
        (os.ST_NOEXEC, sc.MS_NOEXEC),
        (os.ST_NOATIME, sc.MS_NOATIME),
        (os.ST_NODIRATIME, sc.MS_NODIRATIME),
        (os.ST_RELATIME, sc.MS_RELATIME),
        (os.ST_RDONLY, sc.MS_RDONLY),
    ):
        if st.f_flag & st_flag:
            flags |= ms_flag
    return flags


def _bind(source: str, target: str, *, read_only: bool) -> None:
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_NOSUID | sc.MS_NODEV | _locked_flags(target)
    if read_only:
        flags |= sc.MS_RDONLY
    sc.mount(None, target, None, flags)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _landlock(layout: Layout) -> None:
    from grainhouse_grainmgr import landlock  # the colleague's module; absent -> not offered

    read_only = [
        *RUNTIME_DIRS,
        "/etc",
        "/opt/app",
        "/dev",
        "/proc",
        *(inside for _, inside in layout.runtime),
    ]
    read_only = sorted({p for p in read_only if os.path.exists(p)})
    if not landlock.restrict(read_only, ["/var", GRAIN_TMP, GRAIN_SHM, "/dev/null"]):
        raise StepError("the kernel refused the Landlock ruleset")


def seccomp_installer() -> Callable[[bytes], None]:
    from grainhouse_grainmgr import seccomp_loader

    return seccomp_loader.install_filter
