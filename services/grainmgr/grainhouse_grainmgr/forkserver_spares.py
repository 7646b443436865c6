"""Spares: grains started ahead of time, so that a spawn skips the slow part.

Owns: the spare outer processes the fork server keeps ready (each already in its own
cgroup, its namespaces made and its root half built, see `sandbox.run_spare`), their
sockets and cgroups, refilling them when idle and retiring them.
Trusts: a spare's two short messages on its socket ("P<pid>", then "R"); anything else
retires it.
Never: refills during a burst of requests (a cgroup move stalls every fork on the machine);
hands out a spare that is not ready; leaves a retired spare's process or cgroup behind.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
from dataclasses import dataclass

from grainhouse_grainmgr import sandbox
from grainhouse_grainmgr.cgroups import Cgroups, GrainCgroup
from grainhouse_grainmgr.sandbox_layout import Layout

SPARE_IDLE = 0.02  # seconds without requests before spares are refilled


@dataclass
class Spare:
    """A pre-forked outer process already in its own cgroup (see sandbox.run_spare)."""

    pid: int  # the outer process
    sock: socket.socket
    cgroup: GrainCgroup | None  # None without cgroups (spares still save fork and mounts)
    init_pid: int = 0  # its init, once it said "P<pid>"
    ready: bool = False  # the init said "R": its root is half built, it waits for a plan


class SparesMixin:
    """The spare pool (part of `forkserver.ForkServer`)."""

    selector: selectors.BaseSelector
    spares: list[Spare]
    spare_count: int
    spare_serial: int
    cgroups: Cgroups | None
    layout: Layout
    root_mode: bool
    seccomp_program: bytes | None

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
