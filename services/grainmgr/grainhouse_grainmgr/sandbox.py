"""Builds one grain's sandbox inside the fork server's children, as an ordered checklist.

Owns: the steps run between fork and exec, in the two processes of a grain: the *outer*
process (the fork server's child, outside the grain's pid namespace, which only waits) and
the grain's *init* (PID 1 of the grain's pid namespace, which builds the root and execs the
grain's first program); and the host skeleton they mount (`Layout`, built once at start).
Trusts: the `Plan` built by the fork server from an admitted spawn request (paths checked by
`admission`); the seccomp program compiled by `seccomp_policy` at grainmgr start.
Never: returns to the caller on error (each process reports on the report pipe and exits);
runs Python code after the seccomp filter is loaded, except `posix_spawn` of the child and
`execve`; leaves a capability, an inherited fd or a host environment variable to the grain.

Wire between the fork server and a grain's processes (the report pipe, newline-framed):
  "P<pid>" the init exists (its host pid; a spare says this on its socket instead)
  "U"      the init has its plan; the server writes uid_map / gid_map and answers "G" on go
  "E<msg>" a step failed (the message names it); the process exits 127
  EOF      the init exec'd (the pipe is close-on-exec), after starting its child if the plan
           has one (SpawnSpec.child_argv), and the outer process closed its copy
A spare also says "R" on its socket once its init has done every step that does not
depend on the grain (`_premount`); then it receives the plan there (JSON + SCM_RIGHTS).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from grainhouse_grainmgr import syscalls as sc
from grainhouse_grainmgr.spec import CHILD_PID_ENV

GRAIN_TMP = "/tmp"  # noqa: S108  (a path inside the grain's root: its own private tmpfs)
GRAIN_SHM = "/dev/shm"  # noqa: S108  (same: the grain's own small tmpfs)
GRAIN_UID = 1000
GRAIN_GID = 1000
HOSTNAME = "sandbox"

NAMESPACES = (
    sc.CLONE_NEWUSER
    | sc.CLONE_NEWNS
    | sc.CLONE_NEWPID
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWCGROUP
)

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

# Descriptor numbers of the outer/inner processes: low ones are the grain's, high ones ours.
_FD_REPORT = 900
_FD_GO = 901
_FD_LIFELINE = 902
_FD_PACKAGE = 903
_FD_VAR = 904

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


# -- the host skeleton, built once per launcher start ------------------------------------------


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
    runtime_dir: str, extra_ro: list[str] | list[str | list[str] | tuple[str, str]]
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


# -- one grain's plan ----------------------------------------------------------------------------


@dataclass
class Plan:
    """What a grain needs beyond the layout, computed by the fork server from its spec."""

    argv: list[str]
    env: dict[str, str]
    package_dir: str
    var_dir: str
    log_fd: int  # write end of the log pipe (becomes stdout and stderr)
    grant_fds: list[int]  # fork server's copies of the passed fds (become 3, 4, ...)
    report_fd: int
    go_fd: int
    root_mode: bool
    nofile: int
    tmp_bytes: int
    shm_bytes: int
    fsize_bytes: int
    address_space_bytes: int  # RLIMIT_AS when no memory cgroup exists; 0 = none
    nproc: int  # RLIMIT_NPROC: counted per user namespace (Linux >= 5.14), so per grain
    landlock: bool = False
    # Over quota already when starting: /var is mounted read-only from the first instant
    # (the fork server lifts it once a later measurement finds the grain under its quota).
    var_read_only: bool = False
    cgroup_procs: list[str] = field(default_factory=list)  # direct path: joined by the outer
    seccomp_program: bytes | None = None
    child_argv: list[str] = field(default_factory=list)  # see SpawnSpec.child_argv
    child_env: dict[str, str] = field(default_factory=dict)


class StepError(Exception):
    """A named step failed; the message is what the operator sees."""


# Plan fields that travel to a spare as JSON; the fds travel as SCM_RIGHTS, in this order:
# log_fd, report_fd, go_fd, *grant_fds. The seccomp program was inherited at fork.
PLAN_WIRE_FIELDS = (
    "argv", "env", "package_dir", "var_dir", "root_mode", "nofile", "tmp_bytes", "shm_bytes",
    "fsize_bytes", "address_space_bytes", "nproc", "landlock", "var_read_only", "child_argv",
    "child_env",
)  # fmt: skip


def plan_to_wire(plan: Plan) -> tuple[bytes, list[int]]:
    wire = {name: getattr(plan, name) for name in PLAN_WIRE_FIELDS}
    return json.dumps(wire).encode(), [plan.log_fd, plan.report_fd, plan.go_fd, *plan.grant_fds]


def _plan_from_wire(sock: socket.socket, program: bytes | None) -> Plan | None:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(64 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data or len(fds) < 3:
        return None  # the fork server retired us
    return Plan(
        **json.loads(data),
        log_fd=fds[0],
        report_fd=fds[1],
        go_fd=fds[2],
        grant_fds=list(fds[3:]),
        seccomp_program=program,
    )


# -- entry points (each runs in a freshly forked child of the fork server; never returns) -------


def run_outer(layout: Layout, plan: Plan) -> None:
    """Direct path: fork server -> outer process -> init, with the plan known up front."""
    try:
        server_pid = os.getppid()
        with _step("die with the fork server"):
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != server_pid:
                os._exit(1)
        with _step("close inherited fds"):
            _arrange_fds(plan)
        _prepare(plan.root_mode, plan.cgroup_procs)
        life_r = _lifeline()
        pid = os.fork()
        if pid == 0:
            _run_init(layout, plan, None, life_r)
        os.close(life_r)
        _report(f"P{pid}")
        for fd in (_FD_REPORT, _FD_GO, 0, 1, 2):
            os.close(fd)
        os.closerange(3, _FD_REPORT)  # the grain's fds are the init's business, not ours
        _wait_for_init(pid)
    except BaseException as exc:  # report everything: we are a forked child, nobody else will
        _report(f"E{_describe(exc)}")
    os._exit(127)


def run_spare(
    sock_fd: int, server_pid: int, layout: Layout, root_mode: bool, cgroup_procs: list[str],
    program: bytes | None,
) -> None:  # fmt: skip
    """A grain started ahead of time: cgroup joined, namespaces made, root half built.

    Why: moving a process into a cgroup v1 hierarchy waits for an RCU grace period (about
    10 ms here, more than everything else together), and a fork plus a dozen mounts are a
    few more. A spare pays for all that before it is needed; the plan arrives on `sock_fd`.
    """
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:
            os._exit(1)
        os.closerange(3, sock_fd)  # other grains' pipes and sockets are none of our business
        os.closerange(sock_fd + 1, 1 << 20)
        _prepare(root_mode, cgroup_procs)
        sock = socket.socket(fileno=sock_fd)
        life_r = _lifeline()
        pid = os.fork()
        if pid == 0:
            _run_init(layout, None, (sock, program), life_r)
        os.close(life_r)
        sock.send(f"P{pid}".encode())
        sock.close()
        _wait_for_init(pid)
    finally:  # on any error: nobody to tell, the fork server sees the socket close
        os._exit(127)


# -- the outer process ----------------------------------------------------------------------------


def _prepare(root_mode: bool, cgroup_procs: list[str]) -> None:
    """The outer steps; none depends on the grain (a spare runs them ahead of time)."""
    with _step("reset signals"):
        # Python ignores SIGPIPE and SIGXFSZ, the fork server SIGINT; ignored signals
        # survive exec, so reset every one.
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()  # no controlling terminal to inject into (TIOCSTI) or be signalled by
    with _step("no core dumps"):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if root_mode:
        with _step("drop supplementary groups"):
            os.setgroups([])  # host groups would still grant access through the mapping
        # Best effort (needs CAP_SYS_RESOURCE): the OOM killer should pick the grain's
        # processes, not the outer one that reports its status.
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    with _step("join the grain's cgroup"):
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    with _step("create user, mount, pid, net, ipc, uts and cgroup namespaces"):
        sc.unshare(NAMESPACES)


def _lifeline() -> int:
    """A pipe whose write end only we hold: the init sees EOF if we die before it notices."""
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    os.dup2(life_w, _FD_LIFELINE, inheritable=False)
    os.close(life_w)
    return life_r


def _wait_for_init(pid: int) -> None:
    """Keep no power, wait for the grain's init and end the same way (the server's status)."""
    # We hold every capability of the grain's user namespace: drop all but CAP_KILL, which
    # our parent-death signal to the init needs (we keep host root's uid, the init does not).
    sc.drop_capabilities(keep=(sc.CAP_KILL,))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")[:1000]


def _report(message: str) -> None:
    with contextlib.suppress(OSError):  # nobody is listening any more: nothing to do
        os.write(_FD_REPORT, message.encode() + b"\n")


class _step:  # lower case: it reads as a statement, `with _step("..."):`
    """Prefix errors of one checklist step with its name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: BaseException | None, tb: object) -> Literal[False]:
        if ev is not None and not isinstance(ev, StepError | SystemExit):
            raise StepError(f"{self.name}: {_describe(ev)}") from ev
        return False


def _arrange_fds(plan: Plan) -> None:
    """0 = /dev/null, 1 and 2 = the log pipe, 3.. = granted fds, ours high; close the rest."""
    # First lift every fd we need above the range the grain will use, so no dup2 below
    # overwrites one we still need.
    lifted_grants = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000) for fd in plan.grant_fds]
    lifted_log = fcntl.fcntl(plan.log_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.dup2(plan.report_fd, _FD_REPORT, inheritable=False)
    os.dup2(plan.go_fd, _FD_GO, inheritable=False)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(lifted_log, 1)
    os.dup2(lifted_log, 2)
    for i, fd in enumerate(lifted_grants):
        os.dup2(fd, 3 + i)
    os.closerange(3 + len(lifted_grants), _FD_REPORT)
    os.closerange(_FD_LIFELINE + 1, 1 << 20)  # keeps the lifeline if we have one


def _open_dir_at(path: str, target: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    # admission checked there is no symlink on the way; check again now that it is open,
    # so a swap between the check and the open cannot redirect the mount.
    seen = os.readlink(f"/proc/self/fd/{fd}")
    if seen != path:
        raise StepError(f"{path!r} changed under us (now {seen!r})")
    os.dup2(fd, target, inheritable=False)
    os.close(fd)


# -- the grain's init -----------------------------------------------------------------------------


def _run_init(
    layout: Layout,
    plan: Plan | None,
    spare: tuple[socket.socket, bytes | None] | None,
    lifeline: int,
) -> None:
    try:
        _init(layout, plan, spare, lifeline)
    except BaseException as exc:
        _report(f"E{_describe(exc)}")
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
    with _step("die with the outer process"):
        # Our copy of the write end sits at _FD_LIFELINE: replace it by the read end, so the
        # outer process holds the only writer and _arrange_fds keeps the lifeline.
        os.dup2(lifeline, _FD_LIFELINE, inheritable=False)
        os.close(lifeline)
        lifeline = _FD_LIFELINE
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        _check_lifeline(lifeline)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")  # give the grain back to the OOM killer
    _premount(layout)
    if spare is not None:
        sock, program = spare
        sock.send(b"R")
        received = _plan_from_wire(sock, program)
        if received is None:
            os._exit(0)
        plan = received
        with _step("close inherited fds"):
            _arrange_fds(plan)  # also closes the spare socket
    assert plan is not None
    _report("U")
    with _step("wait for uid/gid maps"):
        if os.read(_FD_GO, 1) != b"G":
            raise StepError("the fork server gave up while mapping uids")
        os.close(_FD_GO)
    with _step("open the grain's package and storage"):
        # By fd, opened in our own mount namespace (a bind source must be in it) and before
        # the uid change (in root mode the path may be reachable by root only).
        _open_dir_at(plan.package_dir, _FD_PACKAGE)
        _open_dir_at(plan.var_dir, _FD_VAR)
    with _step(f"become uid {GRAIN_UID}"):
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
    with _step("make mount propagation private"):
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    with _step("mount the new root"):
        sc.mount(root, root, None, sc.MS_BIND)  # pivot_root wants a mount point
    with _step("mount the platform runtime read-only"):
        for host_path, inside in layout.runtime:
            _bind(host_path, root + inside, read_only=True)
    with _step("mount /etc read-only"):
        _bind(layout.etc, root + "/etc", read_only=True)
    with _step("build a minimal /dev"):
        _bind(layout.dev, root + "/dev", read_only=True)
        for name in DEVICES:
            # Device nodes made in a user namespace do not work (nodev superblock), so bind
            # the host's. No read-only remount: the nodes belong to host root, so the grain
            # can neither chmod nor replace them, and writing to them is what they are for.
            sc.mount(f"/dev/{name}", f"{root}/dev/{name}", None, sc.MS_BIND)
    with _step("mount a fresh /proc of the grain's pid namespace"):
        sc.mount("proc", root + "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    with _step("set the hostname"):
        socket.sethostname(HOSTNAME)
    with _step("bring up loopback (the only interface)"):
        _loopback_up()


def _finish(layout: Layout, plan: Plan) -> None:
    root = layout.root
    with _step("mount the app package read-only at /opt/app"):
        _bind(f"/proc/self/fd/{_FD_PACKAGE}", root + "/opt/app", read_only=True)
    with _step("mount the grain's storage read-write at /var"):
        _bind(f"/proc/self/fd/{_FD_VAR}", root + "/var", read_only=plan.var_read_only)
        os.close(_FD_PACKAGE)
        os.close(_FD_VAR)
    with _step("mount a private /tmp and /dev/shm"):
        for path, size in ((GRAIN_TMP, plan.tmp_bytes), (GRAIN_SHM, plan.shm_bytes)):
            flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_NOEXEC if path == GRAIN_SHM else 0)
            sc.mount("tmpfs", root + path, "tmpfs", flags, f"size={size},mode=1777")
    with _step("pivot_root and detach the old root"):
        os.chdir(root)
        sc.pivot_root(".", ".")  # the old root ends up stacked under the new one...
        sc.umount2(".", sc.MNT_DETACH)  # ...and leaves with this
        os.chdir("/")
    with _step("reopen stdin from the sandbox's /dev/null"):
        null = os.open("/dev/null", os.O_RDONLY)  # the host one's path no longer resolves
        os.dup2(null, 0)
        os.close(null)
    with _step("make the root read-only"):
        sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _locked_flags("/"))
    with _step("set rlimits"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.nofile, plan.nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if plan.fsize_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (plan.fsize_bytes, plan.fsize_bytes))
        if plan.nproc:
            resource.setrlimit(resource.RLIMIT_NPROC, (plan.nproc, plan.nproc))
        if plan.address_space_bytes:
            lim = plan.address_space_bytes
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    with _step("drop every capability"):
        sc.drop_capabilities()
    with _step("set no_new_privs"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if plan.landlock:
        with _step("apply the Landlock ruleset"):
            _landlock(layout)
    install = _seccomp_installer() if plan.seccomp_program is not None else None
    with _step("load the seccomp filter"):
        if install is not None and plan.seccomp_program is not None:
            install(plan.seccomp_program)
    env = plan.env
    child = _start_child(plan) if plan.child_argv else 0
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


def _seccomp_installer() -> Callable[[bytes], None]:
    from grainhouse_grainmgr import seccomp_policy

    return seccomp_policy.install_filter
