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

The server is one class put together from one mixin per noun, each in its own module:
`forkserver_wire` (the control socket), `forkserver_spawn` (building a grain),
`forkserver_spares` (grains started ahead of time) and `forkserver_grains` (running grains:
exit, logs, quota). This module holds the start (hello, self-test), the loop, the dispatch
and `main`. The mixins never import this module: it runs as `__main__`.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import os
import resource
import selectors
import signal
import socket
import sys
import time
from typing import Any, cast

from grainhouse_grainmgr import admission, sandbox_init, sandbox_layout
from grainhouse_grainmgr import syscalls as sc
from grainhouse_grainmgr.cgroups import Cgroups
from grainhouse_grainmgr.forkserver_grains import Grain, GrainsMixin
from grainhouse_grainmgr.forkserver_spares import SPARE_IDLE, Spare
from grainhouse_grainmgr.forkserver_spawn import SpawnMixin
from grainhouse_grainmgr.spec import Limits, SandboxError, SpawnSpec

HINTS = (
    "user namespaces are needed. Check: /proc/sys/user/max_user_namespaces > 0; "
    "on Debian/older kernels sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
    "sysctl kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing "
    "userns for the grainmgr interpreter); in a container, a seccomp/AppArmor profile that "
    "allows unshare/mount (not --privileged), and a /proc that is not partly masked"
)


class ForkServer(SpawnMixin, GrainsMixin):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.grains: dict[str, Grain] = {}
        self.by_pidfd: dict[int, Grain] = {}
        self.by_logfd: dict[int, Grain] = {}
        self.root_mode = os.geteuid() == 0
        self.cgroups: Cgroups | None = None
        self.allowed_roots: tuple[str, ...] = ()
        self.layout = sandbox_layout.Layout("", "", "", ())
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
        self.layout = sandbox_layout.prepare_layout(runtime_dir, self.extra_ro)
        if message.get("seccomp") is not None:
            self.seccomp_program = base64.b64decode(message["seccomp"])
            # Import now, not in each child: a child must not pay for (or fail at) imports.
            sandbox_init.seccomp_installer()
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
                    # Registered as a socket by _fill_spares; the selector types it loosely.
                    self._spare_message(cast(socket.socket, key.fileobj))
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


def _preload_bridge() -> None:
    """Import the bridge (asyncio, pycapnp, splice) once, here: every grain's init is a fork
    of this process and becomes its bridge without an interpreter start of its own
    (SpawnSpec.bridge_in_process). Without pycapnp here, grains exec the bridge as before."""
    try:
        import capnp  # noqa: F401 - preloaded for the bridge (bridge_capnp.load_capnp finds it)

        from grainhouse_grainmgr import bridge, bridge_capnp

        bridge_capnp.preload_schema()
    except ImportError as exc:
        print(f"fork server: the bridge runs exec'd (no preload: {exc})", file=sys.stderr)
        return
    sandbox_init.RUN_BRIDGE = bridge.run_in_init


def main(argv: list[str]) -> int:
    sock_fd, parent = int(argv[1]), int(argv[2])
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # grainmgr gone -> us gone -> grains gone
    if os.getppid() != parent:
        return 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sc.cap_last_cap()  # read once here, not in every child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to grainmgr, which closes us
    _preload_bridge()
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
