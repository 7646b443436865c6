"""Spawning one grain: from an admitted spec to a running sandbox, in the fork server.

Owns: a grain's start: its uid (a stable slot per grain in root mode) and the ownership of
its storage, its cgroup, log sink and pipes, the `Plan` handed to a fresh outer process or
to a spare, the report-pipe handshake and the uid/gid maps it asks for.
Trusts: a request's spec once `admission.check_spec` (called by `_spawn` for every request)
accepted it; the sandbox's report lines, which only choose between success and a named failure.
Never: lets a failed start leave a process, a cgroup or an fd behind; waits longer than
SPAWN_TIMEOUT for a sandbox; maps more than one uid and one gid into a grain.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import selectors
import signal
import socket
import time
import zlib

from grainhouse_grainmgr import admission, quota, sandbox, sandbox_layout, sandbox_plan
from grainhouse_grainmgr.cgroups import GrainCgroup
from grainhouse_grainmgr.forkserver_grains import Grain
from grainhouse_grainmgr.forkserver_spares import Spare, SparesMixin
from grainhouse_grainmgr.logsink import LogSink
from grainhouse_grainmgr.spec import SandboxError, SpawnSpec

SPAWN_TIMEOUT = 20.0


class SpawnMixin(SparesMixin):
    """Building a grain's sandbox (part of `forkserver.ForkServer`)."""

    allowed_roots: tuple[str, ...]
    grains: dict[str, Grain]
    by_pidfd: dict[int, Grain]
    by_logfd: dict[int, Grain]
    uid_base: int
    uid_count: int
    landlock: bool
    clean_packages: admission.CleanPackages

    def _spawn(self, spec: SpawnSpec, fds: list[int], *, admit: bool) -> Grain:
        if spec.grain_id in self.grains:
            raise SandboxError("invalid", f"grain {spec.grain_id!r} is already running")
        if admit:
            admission.check_spec(spec, self.allowed_roots, self.clean_packages)
        uid = self._allocate_uid(spec.grain_id)
        if self.root_mode:
            self._own_storage(spec.var_dir, uid)
        limits = spec.limits
        cgroup: GrainCgroup | None = None
        sink: LogSink | None = None
        spare = self._take_spare() if admit else None
        if spare is None:
            # A fresh outer process joins the cgroup itself: it must exist before the fork.
            if self.cgroups is not None:
                try:
                    cgroup = self.cgroups.create(spec.grain_id, limits.memory_bytes, limits.pids)
                except OSError as exc:
                    raise SandboxError(
                        "unavailable", f"creating the grain's cgroup: {exc}"
                    ) from exc
            try:
                sink = self._sink(spec)
            except SandboxError:
                if cgroup:
                    cgroup.kill_and_remove()
                raise
        has_cgroup = self.cgroups is not None and (spare is None or spare.cgroup is not None)
        # A grain that restarts over its quota must not get a writable /var until the next
        # periodic measurement: measure now, before anything runs.
        var_used = quota.measure(spec.var_dir) if limits.var_quota_bytes else 0
        over_quota = bool(limits.var_quota_bytes) and var_used > limits.var_quota_bytes
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        plan = sandbox_plan.Plan(
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
            # With a spare, its cgroup is adopted only after the plan left (see below).
            address_space_bytes=0 if has_cgroup else limits.memory_bytes,
            nproc=limits.pids,
            seccomp_program=self.seccomp_program,
            landlock=self.landlock,
            var_read_only=over_quota,
            child_argv=spec.child_argv,
            child_env=spec.child_env,
            bridge_in_process=spec.bridge_in_process,
        )
        if spare is not None:
            data, plan_fds = sandbox_plan.plan_to_wire(plan)
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
            if spare is not None:
                # While the spare's init takes its plan, its cgroup gets the grain's name and
                # limits and the log its sink; then its uid map and "G" (its namespaces exist
                # since it was made: no need to wait for its "U", which saves the init a wait
                # for us). The init opens, mounts and runs nothing of the grain's before "G".
                cgroup, sink = self._adopt(spec, spare)
                self._map_ids(outer, uid, go_w)
            init_pid = self._handshake(outer, uid, report_r, go_w, mapped=spare is not None)
            if spare is not None:
                init_pid = spare.init_pid
        except SandboxError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(outer, signal.SIGKILL)
            os.waitpid(outer, 0)
            os.close(log_r)
            if sink is not None:
                sink.close()
            if cgroup:
                cgroup.kill_and_remove()
            raise
        finally:
            os.close(report_r)
            os.close(go_w)
        assert sink is not None  # made on either path above
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

    def _sink(self, spec: SpawnSpec) -> LogSink:
        try:
            return LogSink(spec.log_path, spec.limits.log_bytes, spec.limits.log_keep)
        except OSError as exc:
            raise SandboxError("invalid", f"opening log_path: {exc.strerror}") from exc

    def _adopt(self, spec: SpawnSpec, spare: Spare) -> tuple[GrainCgroup | None, LogSink]:
        """A spare's cgroup renamed to the grain's, with its limits, and the grain's log sink.
        On failure nothing is left of either (the caller kills the spare)."""
        cgroup = None
        if self.cgroups is not None and spare.cgroup is not None:
            limits = spec.limits
            try:
                cgroup = self.cgroups.adopt(
                    spare.cgroup, spec.grain_id, limits.memory_bytes, limits.pids
                )
            except OSError as exc:
                spare.cgroup.kill_and_remove()
                raise SandboxError("unavailable", f"creating the grain's cgroup: {exc}") from exc
        try:
            return cgroup, self._sink(spec)
        except SandboxError:
            if cgroup:
                cgroup.kill_and_remove()
            raise

    def _handshake(
        self, outer: int, uid: int, report_r: int, go_w: int, *, mapped: bool = False
    ) -> int:
        """Follow the report pipe until EOF (exec'd) or a failure; answer "U" with the uid
        map and "G" unless the map was written already (`mapped`: a spare's)."""
        deadline = time.monotonic() + SPAWN_TIMEOUT
        buffer = b""
        init_pid = 0
        asked = False
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
                    if not mapped:
                        self._map_ids(outer, uid, go_w)
                    asked = True
                elif text.startswith("P"):
                    init_pid = int(text[1:])
                elif text.startswith("E"):
                    raise SandboxError("internal", f"sandbox set-up failed at {text[1:]}")
        if not asked:
            raise SandboxError("internal", "the sandbox ended before it asked for its uid map")
        return init_pid

    def _map_ids(self, outer: int, uid: int, go_w: int) -> None:
        gid = uid if self.root_mode else os.getegid()
        try:
            with open(f"/proc/{outer}/uid_map", "w") as f:
                f.write(f"{sandbox_layout.GRAIN_UID} {uid} 1\n")
            with open(f"/proc/{outer}/setgroups", "w") as f:
                f.write("deny")  # required before an unprivileged gid_map, and wanted anyway
            with open(f"/proc/{outer}/gid_map", "w") as f:
                f.write(f"{sandbox_layout.GRAIN_GID} {gid} 1\n")
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
