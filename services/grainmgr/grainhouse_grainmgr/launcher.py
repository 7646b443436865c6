"""grainmgr's handle on the fork server: start it first, then ask it for grains.

Owns: the fork server process and the control socket to it; the futures of pending requests
and of each grain's exit.
Trusts: the fork server's replies (it is our own child, started from our own code).
Never: forks a grain itself (grainmgr runs gRPC and asyncio threads: fork without exec is
unsafe there); uses `preexec_fn`; sends anything but JSON and fds over the socket.

Usage (in grainmgr's `__main__`, before any thread, event loop or gRPC server exists):

    launcher = Launcher.start(LauncherSettings(allowed_roots=(data_dir,)))
    ...
    grain = await launcher.spawn(SpawnSpec(...))
    status = await launcher.wait(grain.grain_id)
    launcher.close()
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from grainhouse_grainmgr.spec import ExitStatus, Limits, SandboxError, SpawnSpec

__all__ = [
    "ExitStatus",
    "GrainProcess",
    "Launcher",
    "LauncherSettings",
    "Limits",
    "SandboxError",
    "SpawnSpec",
    "VarUsage",
]

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class LauncherSettings:
    """How the fork server is started. Defaults suit a root grainmgr on our machines."""

    allowed_roots: tuple[str, ...]  # host dirs under which package/var/log paths must lie
    # Scratch dir for the new-root mount point (made 0755: grains must reach it); default: temp
    runtime_dir: str | None = None
    cgroup_name: str = "grainhouse"  # our subtree in each cgroup hierarchy (stale ones cleaned)
    uid_base: int = 200_000  # root mode: first host uid of grains
    uid_count: int = 65_536  # root mode: number of grain uids
    # Extra read-only mounts: a host path (mounted at the same place) or a (host, inside)
    # pair; nothing may go under /tmp, /var, /opt/app, /proc or /dev inside.
    extra_ro: tuple[str | tuple[str, str], ...] = ()
    quota_interval: float = 5.0  # seconds between /var usage measurements
    spares: int = 2  # outer processes pre-forked into their cgroup (hides the v1 join cost)
    seccomp: bool = True  # compile and load the seccomp filter (refuse to start without it)
    landlock: bool = True  # add a Landlock ruleset where the kernel supports it
    python: str = sys.executable  # interpreter of the fork server
    run_as: tuple[int, int] | None = None  # root only: run the fork server as (uid, gid)
    start_timeout: float = 30.0


@dataclass(frozen=True)
class GrainProcess:
    grain_id: str
    pid: int  # host pid of the grain's init (PID 1 inside)
    uid: int  # host uid the grain runs as


@dataclass(frozen=True)
class VarUsage:
    used_bytes: int
    limit_bytes: int
    exceeded: bool  # /var is read-only inside the grain until usage drops under the limit


@dataclass
class _Exit:
    future: asyncio.Future[ExitStatus]
    quota_events: list[VarUsage] = field(default_factory=list)


class Launcher:
    def __init__(
        self, proc: subprocess.Popen[bytes], sock: socket.socket, info: dict[str, Any]
    ) -> None:
        self._proc = proc
        self._sock = sock
        self.info = info
        self.mode: str = info["mode"]  # "root" or "unprivileged"
        self.cgroup_version: int = info["cgroup_version"]  # 0 = no cgroup limits
        self.landlock_abi: int = info["landlock_abi"]
        self.seccomp: bool = info["seccomp"]
        self.pid: int = proc.pid
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[str, _Exit] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- start --------------------------------------------------------------------------------

    @classmethod
    def start(cls, settings: LauncherSettings) -> Launcher:
        """Start the fork server NOW (before grainmgr starts threads) and check it works."""
        program = None
        if settings.seccomp:
            try:
                from grainhouse_grainmgr import seccomp_compiler

                program = seccomp_compiler.compile_filter()
            except Exception as exc:
                raise SandboxError("unavailable", f"compiling the seccomp filter: {exc}") from exc
        runtime_dir = settings.runtime_dir or tempfile.mkdtemp(prefix="grainhouse-launcher-")
        if settings.run_as is not None:
            os.chown(runtime_dir, *settings.run_as)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            settings.python,
            "-s",
            "-m",
            "grainhouse_grainmgr.forkserver",
            str(theirs.fileno()),
            str(os.getpid()),
        ]
        # A clean environment: only what finds our package (the fork server imports nothing else).
        env = {"PYTHONPATH": _PACKAGE_PARENT, "PATH": "/usr/bin:/bin"}
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
                close_fds=True,
                user=settings.run_as[0] if settings.run_as else None,
                group=settings.run_as[1] if settings.run_as else None,
                extra_groups=[] if settings.run_as else None,
                cwd="/",
            )
        except OSError as exc:
            raise SandboxError("unavailable", f"starting the fork server: {exc}") from exc
        finally:
            theirs.close()
        hello = {
            "op": "hello",
            "settings": {
                "allowed_roots": list(settings.allowed_roots),
                "runtime_dir": runtime_dir,
                "cgroup_name": settings.cgroup_name,
                "uid_base": settings.uid_base,
                "uid_count": settings.uid_count,
                "extra_ro": list(settings.extra_ro),
                "quota_interval": settings.quota_interval,
                "spares": settings.spares,
                "landlock": settings.landlock,
            },
            "seccomp": base64.b64encode(program).decode() if program is not None else None,
        }
        ours.settimeout(settings.start_timeout)
        try:
            ours.send(json.dumps(hello).encode())
            data = ours.recv(1 << 20)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise SandboxError("unavailable", f"the fork server did not answer: {exc}") from exc
        if not data:
            proc.wait()
            raise SandboxError(
                "unavailable", f"the fork server exited at start (status {proc.returncode})"
            )
        reply = json.loads(data)
        if not reply.get("ok"):
            proc.wait()
            raise SandboxError(reply.get("kind", "internal"), reply.get("message", "?"))
        ours.setblocking(False)
        return cls(proc, ours, reply["info"])

    # -- requests -----------------------------------------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._on_readable)
        elif self._loop is not loop:
            raise SandboxError("internal", "the launcher is bound to another event loop")
        return loop

    async def _call(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> dict[str, Any]:
        if self._closed:
            raise SandboxError("unavailable", "the launcher is closed")
        loop = self._attach()
        self._next_id += 1
        message["id"] = self._next_id
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[self._next_id] = future
        data = json.dumps(message).encode()
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            # Datagrams this small never block on a local SEQPACKET socket in practice; if
            # the buffer is full we wait for room rather than fail.
            while True:
                try:
                    self._sock.sendmsg([data], ancillary)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        except OSError as exc:
            self._pending.pop(self._next_id, None)
            raise SandboxError("unavailable", f"the fork server is gone: {exc}") from exc
        reply = await future
        if not reply.get("ok"):
            raise SandboxError(reply.get("kind", "internal"), reply.get("message", "?"))
        return reply

    def _on_readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            message = json.loads(data)
            if "event" in message:
                self._on_event(message)
                continue
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)

    def _on_event(self, message: dict[str, Any]) -> None:
        grain_id = message["grain_id"]
        if message["event"] == "exit":
            entry = self._exits.get(grain_id)
            if entry is not None and not entry.future.done():
                entry.future.set_result(
                    ExitStatus(
                        grain_id=grain_id,
                        code=message["code"],
                        signal=message["signal"],
                        oom_killed=message["oom_killed"],
                        reason=message["reason"],
                    )
                )
        elif message["event"] == "quota":
            entry = self._exits.get(grain_id)
            if entry is not None:
                entry.quota_events.append(
                    VarUsage(message["used"], message["limit"], message["exceeded"])
                )

    def _lost(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        error = SandboxError("unavailable", "the fork server died")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for grain_id, entry in self._exits.items():
            if not entry.future.done():
                entry.future.set_result(ExitStatus(grain_id, None, None, False, "launcher-lost"))
        self._closed = True

    # -- public API ---------------------------------------------------------------------------

    async def spawn(self, spec: SpawnSpec) -> GrainProcess:
        """Build the sandbox and exec `spec.argv[0]` in it; returns once exec succeeded."""
        spec.check()
        loop = self._attach()
        previous = self._exits.get(spec.grain_id)
        if previous is not None and not previous.future.done():
            raise SandboxError("invalid", f"grain {spec.grain_id!r} is already running")
        entry = _Exit(loop.create_future())
        self._exits[spec.grain_id] = entry
        try:
            reply = await self._call({"op": "spawn", "spec": spec.to_wire()}, spec.pass_fds)
        except BaseException:
            if self._exits.get(spec.grain_id) is entry:
                del self._exits[spec.grain_id]
            raise
        return GrainProcess(spec.grain_id, reply["pid"], reply["uid"])

    async def kill(self, grain_id: str) -> ExitStatus | None:
        """Kill the grain's whole process tree and wait until it is gone."""
        await self._call({"op": "kill", "grain_id": grain_id})
        entry = self._exits.get(grain_id)
        return await entry.future if entry is not None else None

    async def wait(self, grain_id: str) -> ExitStatus:
        entry = self._exits.get(grain_id)
        if entry is None:
            raise SandboxError("invalid", f"no grain {grain_id!r} was spawned by this launcher")
        return await asyncio.shield(entry.future)

    async def usage(self, grain_id: str) -> VarUsage:
        """Measure the grain's /var now, enforce its quota, and report."""
        reply = await self._call({"op": "usage", "grain_id": grain_id})
        return VarUsage(reply["used"], reply["limit"], reply["exceeded"])

    def quota_events(self, grain_id: str) -> list[VarUsage]:
        entry = self._exits.get(grain_id)
        return list(entry.quota_events) if entry else []

    def close(self) -> None:
        """Stop the fork server; it kills every grain before it exits."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._closed = True
        self._sock.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
