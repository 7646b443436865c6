"""Builds one grain's sandbox inside the fork server's children: the ways in, the outer process.

Owns: the two entry points (`run_outer`, the plan known up front; `run_spare`, a grain
started ahead of time) and the steps of the *outer* process (the fork server's child,
outside the grain's pid namespace, which only waits): signals, core dumps, the grain's cgroup
and its namespaces. The grain's *init* (PID 1 of the grain's pid namespace, which builds the
root and execs the grain's first program) is `sandbox_init`; the host skeleton it mounts is
`sandbox_layout`; the plan and its wire `sandbox_plan`; named steps and fd numbers
`sandbox_steps`.
Trusts: the `Plan` built by the fork server from an admitted spawn request (paths checked by
`admission`); the seccomp program compiled by `seccomp_compiler` at grainmgr start.
Never: returns to the caller on error (each process reports on the report pipe and exits);
runs Python code after the seccomp filter is loaded, except `posix_spawn` of the child and
`execve`; leaves a capability, an inherited fd or a host environment variable to the grain;
imports anything outside the standard library and this package's fork-server side (every
module here is imported once by the fork server, before it forks).

Wire between the fork server and a grain's processes (the report pipe, newline-framed):
  "P<pid>" the init exists (its host pid; a spare says this on its socket instead)
  "U"      the init has its plan; the server writes uid_map / gid_map and answers "G" on go
           (a spare's map is written when its plan is sent: its "G" is already waiting)
  "E<msg>" a step failed (the message names it); the process exits 127
  EOF      the init exec'd (the pipe is close-on-exec), after starting its child if the plan
           has one (SpawnSpec.child_argv), and the outer process closed its copy
A spare also says "R" on its socket once its init has done every step that does not
depend on the grain (`sandbox_init._premount`); then it receives the plan there (JSON + SCM_RIGHTS).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket

from grainhouse_grainmgr import syscalls as sc
from grainhouse_grainmgr.sandbox_init import run_init
from grainhouse_grainmgr.sandbox_layout import Layout
from grainhouse_grainmgr.sandbox_plan import Plan
from grainhouse_grainmgr.sandbox_steps import (
    FD_GO,
    FD_LIFELINE,
    FD_REPORT,
    arrange_fds,
    describe,
    report,
    step,
)

NAMESPACES = (
    sc.CLONE_NEWUSER
    | sc.CLONE_NEWNS
    | sc.CLONE_NEWPID
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWCGROUP
)


# -- entry points (each runs in a freshly forked child of the fork server; never returns) -------


def run_outer(layout: Layout, plan: Plan) -> None:
    """Direct path: fork server -> outer process -> init, with the plan known up front."""
    try:
        server_pid = os.getppid()
        with step("die with the fork server"):
            sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != server_pid:
                os._exit(1)
        with step("close inherited fds"):
            arrange_fds(plan)
        _prepare(plan.root_mode, plan.cgroup_procs)
        life_r = _lifeline()
        pid = os.fork()
        if pid == 0:
            run_init(layout, plan, None, life_r)
        os.close(life_r)
        report(f"P{pid}")
        for fd in (FD_REPORT, FD_GO, 0, 1, 2):
            os.close(fd)
        os.closerange(3, FD_REPORT)  # the grain's fds are the init's business, not ours
        _wait_for_init(pid)
    except BaseException as exc:  # report everything: we are a forked child, nobody else will
        report(f"E{describe(exc)}")
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
            run_init(layout, None, (sock, program), life_r)
        os.close(life_r)
        sock.send(f"P{pid}".encode())
        sock.close()
        _wait_for_init(pid)
    finally:  # on any error: nobody to tell, the fork server sees the socket close
        os._exit(127)


# -- the outer process ----------------------------------------------------------------------------


def _prepare(root_mode: bool, cgroup_procs: list[str]) -> None:
    """The outer steps; none depends on the grain (a spare runs them ahead of time)."""
    with step("reset signals"):
        # Python ignores SIGPIPE and SIGXFSZ, the fork server SIGINT; ignored signals
        # survive exec, so reset every one.
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()  # no controlling terminal to inject into (TIOCSTI) or be signalled by
    with step("no core dumps"):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if root_mode:
        with step("drop supplementary groups"):
            os.setgroups([])  # host groups would still grant access through the mapping
        # Best effort (needs CAP_SYS_RESOURCE): the OOM killer should pick the grain's
        # processes, not the outer one that reports its status.
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    with step("join the grain's cgroup"):
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    with step("create user, mount, pid, net, ipc, uts and cgroup namespaces"):
        sc.unshare(NAMESPACES)


def _lifeline() -> int:
    """A pipe whose write end only we hold: the init sees EOF if we die before it notices."""
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    os.dup2(life_w, FD_LIFELINE, inheritable=False)
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
