"""The fork server's running grains: their exit, their logs and their /var quota.

Owns: the table of running grains (by id, by pidfd, by log pipe), reaping their outer
processes, the "exit" and "quota" events, pumping their log pipes into their log sinks,
and switching /var read-only and back as their usage crosses the quota.
Trusts: the kernel's exit status and the grain's cgroup for OOM kills; `quota.measure`.
Never: blocks on a grain (every read is non-blocking, one per wakeup); lets a full disk or
a dying grain stop the fork server; reads a grain's log output for meaning.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from dataclasses import dataclass

from grainhouse_grainmgr import quota
from grainhouse_grainmgr.cgroups import GrainCgroup
from grainhouse_grainmgr.forkserver_wire import WireMixin
from grainhouse_grainmgr.logsink import LogSink
from grainhouse_grainmgr.spec import SpawnSpec


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


class GrainsMixin(WireMixin):
    """Life and death of running grains (part of `forkserver.ForkServer`)."""

    selector: selectors.BaseSelector
    grains: dict[str, Grain]
    by_pidfd: dict[int, Grain]
    by_logfd: dict[int, Grain]

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
