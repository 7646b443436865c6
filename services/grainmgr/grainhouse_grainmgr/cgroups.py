"""Per-grain memory and pids limits through cgroups: v1 where the machine offers that, else v2.
Also the freezer that holds a running grain still while grainmgr exports its /var.

Owns: the directory `<launcher's own cgroup>/<name>/` in each controller it uses, and every
grain cgroup below it (`<name>/<grain_id>`); stale ones are killed and removed at start.
Trusts: /proc/self/cgroup and /proc/self/mountinfo to say where the hierarchies are; for
`Freezer.of`, /proc/<pid>/cgroup of a grain's init (read by grainmgr, which is root).
Never: touches cgroups outside its own `<name>` directory; writes a limit it did not get from
the spawn request or the settings; freezes a cgroup that is not one grain's own (the directory
must be named after the grain); leaves a cgroup frozen when it kills it.

On our machines cgroup v2 is mounted but has no memory or pids controller, while the v1
`memory` and `pids` hierarchies have both (writable by root only). Unprivileged launchers get
no cgroup unless a v2 subtree was delegated to them (systemd `Delegate=yes`).

Freezing: v2 has `cgroup.freeze` in every grain cgroup. On v1 a grain also joins the
`freezer` hierarchy when it is mounted and writable (an optional controller: without it the
launcher still runs, and grainmgr stops a grain instead of freezing it for an export). A frozen
grain keeps its memory, sockets and pid; killing it thaws it first (a v1 frozen task does not
die of SIGKILL until thawed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


def _own_paths() -> dict[str, str]:
    """Map controller name ("" for v2) to our cgroup path inside its hierarchy."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _mounts() -> dict[str, str]:
    """Map controller name ("" for v2) to its mount point."""
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.rstrip("\n").split(" - ", 1)
            fstype, _, options = right.split(" ", 2)
            mountpoint = left.split(" ")[4]
            if fstype == "cgroup2":
                found.setdefault("", mountpoint)
            elif fstype == "cgroup":
                for opt in options.split(","):
                    if opt in ("memory", "pids", "freezer"):
                        found.setdefault(opt, mountpoint)
    return found


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@dataclass(frozen=True)
class GrainCgroup:
    """One grain's cgroup directories (one per controller in v1, one in v2)."""

    version: int
    dirs: tuple[str, ...]

    def join(self, pid: int) -> None:
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        for d in self.dirs:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            path = os.path.join(d, name)
            if os.path.exists(path):
                for line in _read(path).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def kill_and_remove(self) -> None:
        _kill_and_remove(self.dirs)


def _kill_and_remove(dirs: tuple[str, ...] | list[str]) -> None:
    for d in dirs:
        if not os.path.isdir(d):
            continue
        _thaw_dir(d)  # a frozen task keeps SIGKILL pending (v1) until it is thawed
        kill_file = os.path.join(d, "cgroup.kill")
        if os.path.exists(kill_file):
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
        # A few rounds: a fork bomb may add pids while we kill.
        for _ in range(50):
            try:
                pids = [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)
        for _ in range(100):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.005)  # busy until the killed tasks are reaped


def _thaw_dir(d: str) -> None:
    for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
        path = os.path.join(d, name)
        if os.path.exists(path):
            with contextlib.suppress(OSError):
                _write(path, value)


FREEZE_POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Freezer:
    """The freezer of one grain's cgroup (v1 `freezer.state` or v2 `cgroup.freeze`)."""

    version: int
    directory: str

    @classmethod
    def of(cls, pid: int, grain_id: str) -> Freezer | None:
        """The freezer of the cgroup that `pid` (a grain's init) is in, or None when there
        is none, or when that cgroup is not the grain's own (never freeze a shared one)."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        paths: dict[str, str] = {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
        mounts = _mounts()
        for key, version, control in (("freezer", 1, "freezer.state"), ("", 2, "cgroup.freeze")):
            found = paths.get(key)
            if found is None or key not in mounts or os.path.basename(found) != grain_id:
                continue
            directory = mounts[key] + found
            if os.access(os.path.join(directory, control), os.W_OK):
                return cls(version, directory)
        return None

    def freeze(self, timeout: float) -> bool:
        """Freeze every task of the cgroup; True once the kernel says all are frozen.

        False (and thawed again) when that did not happen within `timeout` seconds: a task
        stuck in an uninterruptible sleep cannot freeze, and the caller then falls back."""
        try:
            if self.version == 1:
                _write(os.path.join(self.directory, "freezer.state"), "FROZEN")
            else:
                _write(os.path.join(self.directory, "cgroup.freeze"), "1")
            deadline = time.monotonic() + timeout
            while not self.frozen():
                if time.monotonic() > deadline:
                    self.thaw()
                    return False
                time.sleep(FREEZE_POLL_SECONDS)
        except OSError:
            self.thaw()
            return False
        return True

    def frozen(self) -> bool:
        if self.version == 1:
            return _read(os.path.join(self.directory, "freezer.state")).strip() == "FROZEN"
        events = _read(os.path.join(self.directory, "cgroup.events")).split()
        return "frozen" in events and events[events.index("frozen") + 1] == "1"

    def thaw(self) -> None:
        """Never raises: a cgroup that vanished (the grain died) has nothing left to thaw."""
        _thaw_dir(self.directory)


class Cgroups:
    """The launcher's cgroup driver; `detect` returns None when no usable controller exists."""

    def __init__(self, version: int, parents: dict[str, str]) -> None:
        self.version = version
        self._parents = parents  # controller ("" for v2) -> our <name> directory

    @classmethod
    def detect(cls, name: str) -> Cgroups | None:
        own = _own_paths()
        mounts = _mounts()
        v2 = cls._detect_v2(name, own, mounts)
        if v2 is not None:
            return v2
        return cls._detect_v1(name, own, mounts)

    @classmethod
    def _detect_v2(cls, name: str, own: dict[str, str], mounts: dict[str, str]) -> Cgroups | None:
        if "" not in mounts or "" not in own:
            return None
        base = mounts[""] + own[""].rstrip("/")
        try:
            available = _read(os.path.join(base, "cgroup.controllers")).split()
        except OSError:
            return None
        if "memory" not in available or "pids" not in available:
            return None
        parent = os.path.join(base, name)
        try:
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        except OSError:
            return None
        return cls(2, {"": parent})

    @classmethod
    def _detect_v1(cls, name: str, own: dict[str, str], mounts: dict[str, str]) -> Cgroups | None:
        parents: dict[str, str] = {}
        for controller in ("memory", "pids"):
            if controller not in mounts or controller not in own:
                return None
            parent = os.path.join(mounts[controller] + own[controller].rstrip("/"), name)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError:
                return None
            if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
                return None
            parents[controller] = parent
        # Optional: a grain that cannot be frozen is stopped for an export instead.
        if "freezer" in mounts and "freezer" in own:
            parent = os.path.join(mounts["freezer"] + own["freezer"].rstrip("/"), name)
            with contextlib.suppress(OSError):
                os.makedirs(parent, exist_ok=True)
            if os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
                parents["freezer"] = parent
        return cls(1, parents)

    def cleanup_stale(self) -> int:
        """Kill and remove every grain cgroup left by a previous launcher; return how many."""
        stale: list[str] = []
        for parent in self._parents.values():
            with contextlib.suppress(OSError):
                stale.extend(e.path for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
        _kill_and_remove(stale)
        # Spares (".spare-N") are ours too, but only grains are worth reporting.
        return len({os.path.basename(p) for p in stale if not os.path.basename(p).startswith(".")})

    def remove_parents(self) -> None:
        """At shutdown, after every grain is gone: leave no empty `<name>` directory behind."""
        for parent in self._parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(parent)

    def create(self, name: str, memory_bytes: int, pids: int) -> GrainCgroup:
        """Make `<name>` in each controller and set its limits (replacing a leftover)."""
        dirs: list[str] = []
        for parent in self._parents.values():
            d = os.path.join(parent, name)
            if os.path.isdir(d):
                _kill_and_remove((d,))
            os.mkdir(d)
            dirs.append(d)
        group = GrainCgroup(self.version, tuple(dirs))
        self.set_limits(group, memory_bytes, pids)
        return group

    def adopt(self, spare: GrainCgroup, grain_id: str, memory_bytes: int, pids: int) -> GrainCgroup:
        """Rename a spare's cgroup (a process already sits in it) to the grain's name."""
        dirs: list[str] = []
        for d in spare.dirs:
            target = os.path.join(os.path.dirname(d), grain_id)
            if os.path.isdir(target):
                _kill_and_remove((target,))
            os.rename(d, target)
            dirs.append(target)
        group = GrainCgroup(self.version, tuple(dirs))
        self.set_limits(group, memory_bytes, pids)
        return group

    def set_limits(self, group: GrainCgroup, memory_bytes: int, pids: int) -> None:
        for d in group.dirs:
            if self.version == 2:
                if memory_bytes:
                    _write(os.path.join(d, "memory.max"), str(memory_bytes))
                    with contextlib.suppress(OSError):
                        _write(os.path.join(d, "memory.swap.max"), "0")
                if pids:
                    _write(os.path.join(d, "pids.max"), str(pids))
            elif os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                if memory_bytes:
                    _write(os.path.join(d, "memory.limit_in_bytes"), str(memory_bytes))
                    memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
                    if os.path.exists(memsw):  # without it a grain could spill into swap
                        with contextlib.suppress(OSError):
                            _write(memsw, str(memory_bytes))
            elif os.path.exists(os.path.join(d, "pids.max")) and pids:
                _write(os.path.join(d, "pids.max"), str(pids))
