"""How a sandbox step is named, fails and reports; the descriptor numbers both processes use.

Owns: the report pipe's writer (`report`), the step context (`step`, `StepError`), the fixed
descriptor numbers of a grain's outer and init processes, and the arrangement of a grain's
fds (0 = /dev/null, 1-2 = log, 3.. = granted, ours high).
Trusts: the plan's fds (the fork server's copies, inherited at fork or received by a spare).
Never: returns an error to a caller that could carry on (a failed step raises `StepError`,
which the entry points report before they exit); imports anything outside the standard
library and `sandbox_plan`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Literal

from grainhouse_grainmgr.sandbox_plan import Plan

# Descriptor numbers of the outer/inner processes: low ones are the grain's, high ones ours.
FD_REPORT = 900
FD_GO = 901
FD_LIFELINE = 902
FD_PACKAGE = 903
FD_VAR = 904


class StepError(Exception):
    """A named step failed; the message is what the operator sees."""


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")[:1000]


def report(message: str) -> None:
    with contextlib.suppress(OSError):  # nobody is listening any more: nothing to do
        os.write(FD_REPORT, message.encode() + b"\n")


class step:  # lower case: it reads as a statement, `with step("..."):`
    """Prefix errors of one checklist step with its name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: object, ev: BaseException | None, tb: object) -> Literal[False]:
        if ev is not None and not isinstance(ev, StepError | SystemExit):
            raise StepError(f"{self.name}: {describe(ev)}") from ev
        return False


def arrange_fds(plan: Plan) -> None:
    """0 = /dev/null, 1 and 2 = the log pipe, 3.. = granted fds, ours high; close the rest."""
    # First lift every fd we need above the range the grain will use, so no dup2 below
    # overwrites one we still need.
    lifted_grants = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000) for fd in plan.grant_fds]
    lifted_log = fcntl.fcntl(plan.log_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
    os.dup2(plan.report_fd, FD_REPORT, inheritable=False)
    os.dup2(plan.go_fd, FD_GO, inheritable=False)
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(lifted_log, 1)
    os.dup2(lifted_log, 2)
    for i, fd in enumerate(lifted_grants):
        os.dup2(fd, 3 + i)
    os.closerange(3 + len(lifted_grants), FD_REPORT)
    os.closerange(FD_LIFELINE + 1, 1 << 20)  # keeps the lifeline if we have one
