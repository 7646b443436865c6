"""What grainmgr asks of the launcher and what it hears back: the spawn request, limits, exits.

Owns: the value types `Limits`, `SpawnSpec`, `ExitStatus`, `SandboxError` and their JSON form
(the only encoding that crosses the launcher socket: no pickle).
Trusts: nothing; `from_wire` re-checks every field's type, because the fork server must not
believe the client blindly either.
Never: imports anything outside the standard library (the fork server may run on a bare
interpreter, e.g. Debian's /usr/bin/python3 in unprivileged mode).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

GRAIN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

MiB = 1024 * 1024
# Set in the first program's environment when a child was started (see SpawnSpec.child_argv).
CHILD_PID_ENV = "GRAINHOUSE_CHILD_PID"


class SandboxError(Exception):
    """A spawn or launcher failure. `kind` is one of: invalid, unavailable, internal.

    `message` is safe to show to an operator: it names the field or the kernel feature at fault.
    """

    KINDS = ("invalid", "unavailable", "internal")

    def __init__(self, kind: str, message: str) -> None:
        if kind not in self.KINDS:
            kind = "internal"
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Per-grain resource limits. Zero means "no limit" only where documented."""

    memory_bytes: int = 512 * MiB  # cgroup memory limit (RLIMIT_AS fallback without cgroups)
    pids: int = 256  # cgroup pids.max; 0 = none
    nofile: int = 1024  # RLIMIT_NOFILE
    tmp_bytes: int = 64 * MiB  # size of the private /tmp tmpfs
    shm_bytes: int = 16 * MiB  # size of /dev/shm
    var_quota_bytes: int = 1024 * MiB  # disk use allowed under /var
    log_bytes: int = 1 * MiB  # size of one log file before rotation
    log_keep: int = 2  # rotated files kept (log.1 .. log.N)

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SandboxError("invalid", f"limits.{name} must be a non-negative integer")
        if self.nofile < 16:
            raise SandboxError("invalid", "limits.nofile must be at least 16")
        if self.tmp_bytes < 1 * MiB or self.shm_bytes < 1 * MiB:
            raise SandboxError("invalid", "limits.tmp_bytes and shm_bytes must be at least 1 MiB")
        if self.log_bytes < 4096:
            raise SandboxError("invalid", "limits.log_bytes must be at least 4096")


@dataclass(frozen=True)
class SpawnSpec:
    """One grain's first process and the host paths its sandbox is built from."""

    grain_id: str  # [A-Za-z0-9_-]{1,64}, used for names (cgroup, log)
    argv: list[str]  # first process inside the sandbox (absolute path inside the sandbox)
    env: dict[str, str]  # the ONLY environment the grain gets
    package_dir: str  # host path, mounted read-only at /opt/app
    var_dir: str  # host path, mounted read-write at /var
    log_path: str  # host path of the grain's stdout/stderr log (size-capped, rotated)
    pass_fds: tuple[int, ...] = ()  # caller's fds that become 3, 4, ... inside
    limits: Limits = field(default_factory=Limits)
    # Optional second program (the grain's app), started by the init with posix_spawn just
    # before the init execs `argv`, in the same sandbox with every restriction applied (the
    # seccomp filter included: it is loaded first). It runs in its own session with cwd
    # /var, fds 0-2 only and exactly `child_env`; the first program finds its pid (inside
    # the grain) in CHILD_PID_ENV and must reap it. Why: the app's start then does not wait
    # for the first program's own start (the bridge's interpreter, ~20 ms idle).
    child_argv: list[str] = field(default_factory=list)  # [] = no child
    child_env: dict[str, str] = field(default_factory=dict)
    # `argv` is the bridge (bridge.py, its config in env's GRAINHOUSE_BRIDGE): the init runs
    # it itself, with the bridge's imports the fork server loaded before it forked, instead of
    # exec'ing a fresh interpreter (about 80 ms of CPU next to the app's own start on every
    # cold open). Every restriction is applied first, exactly as before an exec; `argv` stays
    # the record of what runs. Falls back to the exec when the fork server could not preload.
    bridge_in_process: bool = False

    def check(self) -> None:
        """Shape checks only; path policy lives in `admission`."""
        if not isinstance(self.grain_id, str) or not GRAIN_ID_RE.fullmatch(self.grain_id):
            raise SandboxError("invalid", "grain_id must match [A-Za-z0-9_-]{1,64}")
        if (
            not isinstance(self.argv, list)
            or not self.argv
            or not all(isinstance(a, str) and "\0" not in a for a in self.argv)
        ):
            raise SandboxError("invalid", "argv must be a non-empty list of strings without NUL")
        if not self.argv[0].startswith("/"):
            raise SandboxError("invalid", f"argv[0] must be an absolute path: {self.argv[0]!r}")
        if not _is_env(self.env):
            raise SandboxError("invalid", "env must map names (no '=' or NUL) to strings")
        if not isinstance(self.child_argv, list) or not all(
            isinstance(a, str) and "\0" not in a for a in self.child_argv
        ):
            raise SandboxError("invalid", "child_argv must be a list of strings without NUL")
        if self.child_argv and not self.child_argv[0].startswith("/"):
            raise SandboxError(
                "invalid", f"child_argv[0] must be an absolute path: {self.child_argv[0]!r}"
            )
        if not _is_env(self.child_env):
            raise SandboxError("invalid", "child_env must map names (no '=' or NUL) to strings")
        if not isinstance(self.bridge_in_process, bool):
            raise SandboxError("invalid", "bridge_in_process must be true or false")
        if CHILD_PID_ENV in self.env:
            raise SandboxError("invalid", f"env must not set {CHILD_PID_ENV} (the launcher does)")
        for name in ("package_dir", "var_dir", "log_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
                raise SandboxError("invalid", f"{name} must be an absolute host path")
        if not all(isinstance(fd, int) and fd >= 0 for fd in self.pass_fds):
            raise SandboxError("invalid", "pass_fds must be non-negative integers")
        if len(self.pass_fds) > 16:
            raise SandboxError("invalid", "at most 16 fds may be passed to a grain")
        if not isinstance(self.limits, Limits):
            raise SandboxError("invalid", "limits must be a Limits")
        self.limits.check()

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        del wire["pass_fds"]  # fds travel as SCM_RIGHTS, not as numbers
        wire["nfds"] = len(self.pass_fds)
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> SpawnSpec:
        try:
            limits = Limits(**wire["limits"])
            spec = cls(
                grain_id=wire["grain_id"],
                argv=list(wire["argv"]),
                env=dict(wire["env"]),
                package_dir=wire["package_dir"],
                var_dir=wire["var_dir"],
                log_path=wire["log_path"],
                limits=limits,
                child_argv=list(wire.get("child_argv", [])),
                child_env=dict(wire.get("child_env", {})),
                bridge_in_process=wire.get("bridge_in_process", False),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError("invalid", f"malformed spawn request: {exc}") from exc
        spec.check()
        return spec


def _is_env(env: object) -> bool:
    return isinstance(env, dict) and all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    )


@dataclass(frozen=True)
class ExitStatus:
    """How a grain's first process (and with it, its whole pid namespace) ended."""

    grain_id: str
    code: int | None  # exit code if it exited
    signal: int | None  # signal number if it was killed
    oom_killed: bool = False  # the memory cgroup killed something in the grain
    reason: str = ""  # "exited", "killed", "oom", "launcher-lost"

    @property
    def ok(self) -> bool:
        return self.code == 0
