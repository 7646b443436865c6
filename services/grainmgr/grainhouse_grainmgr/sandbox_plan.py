"""One grain's plan: what its sandbox needs beyond the layout, and its wire to a spare.

Owns: the `Plan` fields and their encoding for a spare (JSON for the fields, SCM_RIGHTS for
the fds, in a fixed order).
Trusts: the fork server, which builds a plan from an admitted spawn request; a spare trusts
the plan it receives on its socket from the fork server that forked it.
Never: opens, closes or checks a path (admission did; the init re-checks by fd); carries the
seccomp program over the wire (a spare inherited it at fork).
"""

from __future__ import annotations

import array
import json
import socket
from dataclasses import dataclass, field


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
    bridge_in_process: bool = False  # see SpawnSpec.bridge_in_process


# Plan fields that travel to a spare as JSON; the fds travel as SCM_RIGHTS, in this order:
# log_fd, report_fd, go_fd, *grant_fds. The seccomp program was inherited at fork.
PLAN_WIRE_FIELDS = (
    "argv", "env", "package_dir", "var_dir", "root_mode", "nofile", "tmp_bytes", "shm_bytes",
    "fsize_bytes", "address_space_bytes", "nproc", "landlock", "var_read_only", "child_argv",
    "child_env", "bridge_in_process",
)  # fmt: skip


def plan_to_wire(plan: Plan) -> tuple[bytes, list[int]]:
    wire = {name: getattr(plan, name) for name in PLAN_WIRE_FIELDS}
    return json.dumps(wire).encode(), [plan.log_fd, plan.report_fd, plan.go_fd, *plan.grant_fds]


def plan_from_wire(sock: socket.socket, program: bytes | None) -> Plan | None:
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
