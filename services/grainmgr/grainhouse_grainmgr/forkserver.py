"""The fork server: a single-threaded process that builds grains' sandboxes on request.

Owns: every grain process (the outer process it forks and, through it, the grain's pid
namespace), their cgroups, uid slots (root mode), log pipes and /var quota state.
Trusts: its parent (grainmgr) over the control socket, for requests only: spawn requests are
re-checked by `spec` and `admission` before anything is forked.
Never: starts a thread or an event loop (it forks); runs a grain's code itself; outlives its
parent (PR_SET_PDEATHSIG and socket EOF both end it, killing every grain first).

Started by `launcher.Launcher.start` as `python -m grainhouse_grainmgr.forkserver <fd> <ppid>`
with only the control socket inherited. Messages are JSON objects, one per SEQPACKET datagram;
the fds a grain is granted ride along as SCM_RIGHTS. Requests carry an "id" echoed in the
reply; unsolicited events ("exit", "quota") carry an "event" name instead.
"""

from __future__ import annotations

import array
import base64
import contextlib
import gc
import json
import os
import resource
import select
import selectors
import signal
import socket
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any

from grainhouse_grainmgr import admission, quota, sandbox
from grainhouse_grainmgr import syscalls as sc
from grainhouse_grainmgr.cgroups import Cgroups, GrainCgroup
from grainhouse_grainmgr.logsink import LogSink
from grainhouse_grainmgr.spec import Limits, SandboxError, SpawnSpec

MAX_MESSAGE = 1 << 20
MAX_FDS = 16
SPAWN_TIMEOUT = 20.0
SPARE_IDLE = 0.02  # seconds without requests before spares are refilled

HINTS = (
    "user namespaces are needed. Check: /proc/sys/user/max_user_namespaces > 0; "
    "on Debian/older kernels sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
    "sysctl kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing "
    "userns for the grainmgr interpreter); in a container, a seccomp/AppArmor profile that "
    "allows unshare/mount (not --privileged), and a /proc that is not partly masked"
)


@dataclass
class Spare:
    """A pre-forked outer process already in its own cgroup (see sandbox.run_spare)."""

    pid: int  # the outer process
    sock: socket.socket
    cgroup: GrainCgroup | None  # None without cgroups (spares still save fork and mounts)
    init_pid: int = 0  # its init, once it said "P<pid>"
    ready: bool = False  # the init said "R": its root is half built, it waits for a plan


@dataclass
class Grain:
    grain_id: str
    spec: SpawnSpec
    outer_pid: int
    init_pid: int
    pidfd: int
    log_fd: int | None
    sink: LogSink
    cgroup: GrainCgroup | None
    uid: int
    killed: bool = False
    var_locked: bool = False
    var_used: int = 0


class ForkServer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.grains: dict[str, Grain] = {}
        self.by_pidfd: dict[int, Grain] = {}
        self.by_logfd: dict[int, Grain] = {}
        self.root_mode = os.geteuid() == 0
        self.cgroups: Cgroups | None = None
        self.allowed_roots: tuple[str, ...] = ()
        self.layout = sandbox.Layout("", "", "", ())
        self.uid_base = 0
        self.uid_count = 0
        self.extra_ro: list[str | list[str]] = []
        self.quota_interval = 5.0
        self.seccomp_program: bytes | None = None
        self.landlock = False
        self.spare_count = 0
        self.spares: list[Spare] = []
        self.spare_serial = 0
        self.clean_packages = admission.CleanPackages()

    # -- wire ---------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message).encode())

    def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % fds.itemsize
                fds.frombytes(payload[:usable])
        if not data:
            return None, list(fds)
        return json.loads(data), list(fds)

    # -- start --------------------------------------------------------------------------------

    def hello(self) -> None:
        message, fds = self.receive()
        for fd in fds:
            os.close(fd)
        if message is None or message.get("op") != "hello":
            raise SystemExit(2)
        try:
            info = self._configure(message)
        except SandboxError as exc:
            self.send({"ok": False, "kind": exc.kind, "message": exc.message})
            raise SystemExit(3) from exc
        self.send({"ok": True, "info": info})

    def _configure(self, message: dict[str, Any]) -> dict[str, Any]:
        s = message["settings"]
        self.allowed_roots = tuple(s["allowed_roots"])
        self.uid_base = int(s["uid_base"])
        self.uid_count = int(s["uid_count"])
        self.extra_ro = list(s["extra_ro"])
        self.quota_interval = float(s["quota_interval"])
        self.spare_count = int(s["spares"])
        runtime_dir = s["runtime_dir"]
        # Grains (other uids in root mode) mount their root from here: they must reach it.
        os.chmod(runtime_dir, 0o755)  # noqa: S103  (mount points and public files only)
        self.layout = sandbox.prepare_layout(runtime_dir, self.extra_ro)
        if message.get("seccomp") is not None:
            self.seccomp_program = base64.b64decode(message["seccomp"])
            # Import now, not in each child: a child must not pay for (or fail at) imports.
            sandbox._seccomp_installer()
        landlock_abi = 0
        if s["landlock"]:
            with contextlib.suppress(ImportError):
                from grainhouse_grainmgr import landlock

                landlock_abi = landlock.abi_version()
        self.landlock = landlock_abi > 0
        self.cgroups = Cgroups.detect(s["cgroup_name"])
        stale = self.cgroups.cleanup_stale() if self.cgroups else 0
        mode = "root" if self.root_mode else "unprivileged"
        try:
            self._self_test(runtime_dir)
        except SandboxError:
            if self.cgroups is not None:
                self.cgroups.remove_parents()  # we will not run: leave nothing behind
            raise
        return {
            "mode": mode,
            "cgroup_version": self.cgroups.version if self.cgroups else 0,
            "landlock_abi": landlock_abi,
            "seccomp": self.seccomp_program is not None,
            "stale_cgroups_removed": stale,
            "pid": os.getpid(),
        }

    def _self_test(self, runtime_dir: str) -> None:
        """Run /bin/true through the whole pipeline once: proves the mode works here."""
        base = os.path.join(runtime_dir, "selftest")
        for sub in ("pkg", "var"):
            os.makedirs(os.path.join(base, sub), 0o755, exist_ok=True)
        spec = SpawnSpec(
            grain_id="selftest",
            argv=["/bin/true"],
            env={},
            package_dir=os.path.join(base, "pkg"),
            var_dir=os.path.join(base, "var"),
            log_path=os.path.join(base, "log"),
            limits=Limits(var_quota_bytes=0),
        )
        try:
            grain = self._spawn(spec, [], admit=False)
        except SandboxError as exc:
            mode = "as root" if self.root_mode else f"as uid {os.geteuid()}"
            raise SandboxError(
                "unavailable", f"cannot build a grain sandbox {mode} ({exc.message}); {HINTS}"
            ) from exc
        _, status = os.waitpid(grain.outer_pid, 0)
        self._finish(grain, status, notify=False)
        if status != 0:
            raise SandboxError("unavailable", f"the self-test grain failed (status {status})")

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        self.selector.register(self.sock, selectors.EVENT_READ, "control")
        self._fill_spares()
        next_quota = time.monotonic() + self.quota_interval
        while True:
            timeout = max(0.0, next_quota - time.monotonic())
            if len(self.spares) < self.spare_count:
                timeout = min(timeout, SPARE_IDLE)
            events = self.selector.select(timeout)
            if not events:
                # Refill only when idle: a spare's cgroup move stalls every fork on the
                # machine for a moment, so keep it away from a burst of requests.
                self._fill_spares()
            for key, _ in events:
                if key.data == "control":
                    if not self._handle_request():
                        self.shutdown()
                        return
                elif key.data == "pidfd":
                    self._reap(self.by_pidfd[key.fd])
                elif key.data == "log":
                    self._pump_log(key.fd)
                elif key.data == "spare":
                    self._spare_message(key.fileobj)  # type: ignore[arg-type]
            if time.monotonic() >= next_quota:
                for grain in list(self.grains.values()):
                    self._check_quota(grain, notify=True)
                next_quota = time.monotonic() + self.quota_interval

    def _handle_request(self) -> bool:
        try:
            message, fds = self.receive()
        except (ConnectionError, OSError):
            return False
        if message is None:
            for fd in fds:
                os.close(fd)
            return False
        rid = message.get("id")
        try:
            reply = self._dispatch(message, fds)
        except SandboxError as exc:
            reply = {"ok": False, "kind": exc.kind, "message": exc.message}
        except Exception as exc:  # a bug here must not take every grain down with it
            reply = {"ok": False, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        reply["id"] = rid
        self.send(reply)
        return True

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = message.get("op")
        if op == "spawn":
            spec = SpawnSpec.from_wire(message["spec"])
            if len(fds) != message["spec"].get("nfds"):
                raise SandboxError("invalid", "the passed fds did not all arrive")
            grain = self._spawn(spec, fds, admit=True)
            return {"ok": True, "pid": grain.init_pid, "uid": grain.uid}
        if op == "kill":
            victim = self.grains.get(str(message.get("grain_id")))
            if victim is not None:
                self._kill(victim)
            return {"ok": True, "running": victim is not None}
        if op == "usage":
            measured = self.grains.get(str(message.get("grain_id")))
            if measured is None:
                raise SandboxError("invalid", f"grain {message.get('grain_id')!r} is not running")
            self._check_quota(measured, notify=False)
            return {
                "ok": True,
                "used": measured.var_used,
                "limit": measured.spec.limits.var_quota_bytes,
                "exceeded": measured.var_locked,
            }
        raise SandboxError("invalid", f"unknown operation {op!r}")

    # -- spawn --------------------------------------------------------------------------------

    def _spawn(self, spec: SpawnSpec, fds: list[int], *, admit: bool) -> Grain:
        if spec.grain_id in self.grains:
            raise SandboxError("invalid", f"grain {spec.grain_id!r} is already running")
        if admit:
            admission.check_spec(spec, self.allowed_roots, self.clean_packages)
        uid = self._allocate_uid(spec.grain_id)
        if self.root_mode:
            self._own_storage(spec.var_dir, uid)
        limits = spec.limits
        cgroup = None
        spare = self._take_spare() if admit else None
        if self.cgroups is not None:
            try:
                if spare is not None and spare.cgroup is not None:
                    cgroup = self.cgroups.adopt(
                        spare.cgroup, spec.grain_id, limits.memory_bytes, limits.pids
                    )
                else:
                    cgroup = self.cgroups.create(spec.grain_id, limits.memory_bytes, limits.pids)
            except OSError as exc:
                if spare is not None:
                    self._retire(spare)
                raise SandboxError("unavailable", f"creating the grain's cgroup: {exc}") from exc
        try:
            sink = LogSink(spec.log_path, limits.log_bytes, limits.log_keep)
        except OSError as exc:
            if spare is not None:
                self._retire(spare)
            if cgroup:
                cgroup.kill_and_remove()
            raise SandboxError("invalid", f"opening log_path: {exc.strerror}") from exc
        # A grain that restarts over its quota must not get a writable /var until the next
        # periodic measurement: measure now, before anything runs.
        var_used = quota.measure(spec.var_dir) if limits.var_quota_bytes else 0
        over_quota = bool(limits.var_quota_bytes) and var_used > limits.var_quota_bytes
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        plan = sandbox.Plan(
            argv=spec.argv,
            env=spec.env,
            package_dir=spec.package_dir,
            var_dir=spec.var_dir,
            log_fd=log_w,
            grant_fds=fds,
            report_fd=report_w,
            go_fd=go_r,
            cgroup_procs=[os.path.join(d, "cgroup.procs") for d in cgroup.dirs] if cgroup else [],
            root_mode=self.root_mode,
            nofile=limits.nofile,
            tmp_bytes=limits.tmp_bytes,
            shm_bytes=limits.shm_bytes,
            fsize_bytes=limits.var_quota_bytes,
            address_space_bytes=0 if cgroup else limits.memory_bytes,
            nproc=limits.pids,
            seccomp_program=self.seccomp_program,
            landlock=self.landlock,
            var_read_only=over_quota,
            child_argv=spec.child_argv,
            child_env=spec.child_env,
        )
        if spare is not None:
            data, plan_fds = sandbox.plan_to_wire(plan)
            outer = spare.pid
            # If the spare died, sending fails and the handshake below reports it.
            with contextlib.suppress(OSError):
                spare.sock.sendmsg(
                    [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", plan_fds))]
                )
            spare.sock.close()
        else:
            outer = os.fork()
            if outer == 0:
                sandbox.run_outer(self.layout, plan)  # never returns
        for fd in (log_w, report_w, go_r):
            os.close(fd)
        try:
            init_pid = self._handshake(outer, uid, report_r, go_w)
            if spare is not None:
                init_pid = spare.init_pid
        except SandboxError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(outer, signal.SIGKILL)
            os.waitpid(outer, 0)
            os.close(log_r)
            sink.close()
            if cgroup:
                cgroup.kill_and_remove()
            raise
        finally:
            os.close(report_r)
            os.close(go_w)
        pidfd = os.pidfd_open(outer)
        os.set_blocking(log_r, False)
        grain = Grain(spec.grain_id, spec, outer, init_pid, pidfd, log_r, sink, cgroup, uid)
        grain.var_used, grain.var_locked = var_used, over_quota
        self.grains[spec.grain_id] = grain
        self.by_pidfd[pidfd] = grain
        self.by_logfd[log_r] = grain
        if admit:
            self.selector.register(pidfd, selectors.EVENT_READ, "pidfd")
            self.selector.register(log_r, selectors.EVENT_READ, "log")
        return grain

    def _fill_spares(self) -> None:
        while len(self.spares) < self.spare_count:
            self.spare_serial += 1
            cgroup = None
            if self.cgroups is not None:
                # A dot is not allowed in grain ids: spare names cannot collide with grains.
                try:
                    cgroup = self.cgroups.create(f".spare-{self.spare_serial}", 0, 0)
                except OSError:
                    return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            server_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                procs = [os.path.join(d, "cgroup.procs") for d in cgroup.dirs] if cgroup else []
                sandbox.run_spare(
                    theirs.fileno(),
                    server_pid,
                    self.layout,
                    self.root_mode,
                    procs,
                    self.seccomp_program,
                )
            theirs.close()
            spare = Spare(pid, ours, cgroup)
            self.spares.append(spare)
            self.selector.register(ours, selectors.EVENT_READ, "spare")

    def _spare_message(self, sock: socket.socket) -> None:
        spare = next((s for s in self.spares if s.sock is sock), None)
        if spare is None:
            return
        try:
            data = sock.recv(16)
        except OSError:
            data = b""
        if data.startswith(b"P"):
            spare.init_pid = int(data[1:])
        elif data == b"R" and spare.init_pid:
            spare.ready = True
        else:
            self._retire(spare)

    def _take_spare(self) -> Spare | None:
        for spare in self.spares:
            if spare.ready:
                self.spares.remove(spare)
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(spare.sock)
                return spare
        return None

    def _retire(self, spare: Spare) -> None:
        if spare in self.spares:
            self.spares.remove(spare)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(spare.sock)
        spare.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(spare.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        if spare.cgroup is not None:
            spare.cgroup.kill_and_remove()

    def _handshake(self, outer: int, uid: int, report_r: int, go_w: int) -> int:
        deadline = time.monotonic() + SPAWN_TIMEOUT
        buffer = b""
        init_pid = 0
        mapped = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("internal", "the sandbox did not come up in time")
            ready, _, _ = select.select([report_r], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(report_r, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text == "U":
                    self._map_ids(outer, uid, go_w)
                    mapped = True
                elif text.startswith("P"):
                    init_pid = int(text[1:])
                elif text.startswith("E"):
                    raise SandboxError("internal", f"sandbox set-up failed at {text[1:]}")
        if not mapped:
            raise SandboxError("internal", "the sandbox ended before it asked for its uid map")
        return init_pid

    def _map_ids(self, outer: int, uid: int, go_w: int) -> None:
        gid = uid if self.root_mode else os.getegid()
        try:
            with open(f"/proc/{outer}/uid_map", "w") as f:
                f.write(f"{sandbox.GRAIN_UID} {uid} 1\n")
            with open(f"/proc/{outer}/setgroups", "w") as f:
                f.write("deny")  # required before an unprivileged gid_map, and wanted anyway
            with open(f"/proc/{outer}/gid_map", "w") as f:
                f.write(f"{sandbox.GRAIN_GID} {gid} 1\n")
        except OSError as exc:
            os.write(go_w, b"X")
            raise SandboxError("unavailable", f"writing the uid/gid map: {exc}") from exc
        os.write(go_w, b"G")

    def _allocate_uid(self, grain_id: str) -> int:
        if not self.root_mode:
            return os.geteuid()
        # Prefer a stable slot per grain so its files keep their owner across restarts.
        taken = {g.uid for g in self.grains.values()}
        start = zlib.crc32(grain_id.encode()) % self.uid_count
        for i in range(self.uid_count):
            uid = self.uid_base + (start + i) % self.uid_count
            if uid not in taken:
                return uid
        raise SandboxError("unavailable", "no free grain uid: too many running grains")

    def _own_storage(self, var_dir: str, uid: int) -> None:
        st = os.lstat(var_dir)
        if st.st_uid == uid and st.st_gid == uid:
            return
        # The grain ran under another slot before: hand its files to the new uid.
        os.lchown(var_dir, uid, uid)
        for dirpath, dirnames, filenames in os.walk(var_dir):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, uid)

    # -- life and death -----------------------------------------------------------------------

    def _kill(self, grain: Grain) -> None:
        grain.killed = True
        for pid in (grain.outer_pid, grain.init_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # init's death takes its whole pid namespace

    def _reap(self, grain: Grain) -> None:
        try:
            pid, status = os.waitpid(grain.outer_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = grain.outer_pid, 0
        if pid == 0:
            return
        self._finish(grain, status, notify=True)

    def _finish(self, grain: Grain, status: int, *, notify: bool) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(grain.pidfd)
        self.by_pidfd.pop(grain.pidfd, None)
        os.close(grain.pidfd)
        self.grains.pop(grain.grain_id, None)
        if grain.log_fd is not None:
            self._pump_log(grain.log_fd, final=True)
        oom = grain.cgroup.oom_kills() > 0 if grain.cgroup else False
        grain.sink.close()
        if notify:
            self._notify_exit(grain, status, oom)
        # After the event: init is dead, so the kernel has already killed the namespace;
        # this only sweeps stragglers and removes the directories.
        if grain.cgroup:
            grain.cgroup.kill_and_remove()

    def _notify_exit(self, grain: Grain, status: int, oom: bool) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        reason = "killed" if grain.killed else ("oom" if oom and sig else "exited")
        self.send(
            {
                "event": "exit",
                "grain_id": grain.grain_id,
                "code": code,
                "signal": sig,
                "oom_killed": oom,
                "reason": reason,
            }
        )

    def _pump_log(self, fd: int, final: bool = False) -> None:
        grain = self.by_logfd.get(fd)
        if grain is None:
            return
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                if final:  # the grain is gone; leftovers of late writers are dropped
                    self._close_log(grain)
                return
            if not data:
                self._close_log(grain)
                return
            # A full disk must not stop the fork server; the grain's output is then lost.
            with contextlib.suppress(OSError):
                grain.sink.write(data)
            if not final:
                return  # one read per wakeup keeps a chatty grain from starving the others

    def _close_log(self, grain: Grain) -> None:
        if grain.log_fd is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(grain.log_fd)
        self.by_logfd.pop(grain.log_fd, None)
        os.close(grain.log_fd)
        grain.log_fd = None

    def _check_quota(self, grain: Grain, *, notify: bool) -> None:
        limit = grain.spec.limits.var_quota_bytes
        if not limit:
            return
        grain.var_used = quota.measure(grain.spec.var_dir)
        exceeded = grain.var_used > limit
        if exceeded == grain.var_locked:
            return
        try:
            quota.set_var_read_only(grain.init_pid, exceeded)
        except OSError:
            return  # the grain is exiting; its exit event follows
        grain.var_locked = exceeded
        if notify:
            self.send(
                {
                    "event": "quota",
                    "grain_id": grain.grain_id,
                    "used": grain.var_used,
                    "limit": limit,
                    "exceeded": exceeded,
                }
            )

    def shutdown(self) -> None:
        for spare in list(self.spares):
            self._retire(spare)
        for grain in list(self.grains.values()):
            self._kill(grain)
        for grain in list(self.grains.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(grain.outer_pid, 0)
            with contextlib.suppress(OSError):
                self._finish(grain, 0, notify=False)
        if self.cgroups is not None:
            self.cgroups.remove_parents()


def main(argv: list[str]) -> int:
    sock_fd, parent = int(argv[1]), int(argv[2])
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # grainmgr gone -> us gone -> grains gone
    if os.getppid() != parent:
        return 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sc.cap_last_cap()  # read once here, not in every child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to grainmgr, which closes us
    # Every child is a fork of this process: keep the collector from touching (and so
    # copying) every inherited page in each child.
    gc.disable()
    gc.freeze()
    sock = socket.socket(fileno=sock_fd)
    server = ForkServer(sock)
    server.hello()
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
