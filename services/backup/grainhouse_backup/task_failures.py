"""Why a backup or restore task failed, in words safe to show its owner.

Owns: `TaskFailure` (what a task's TaskError carries) and the translation of grainmgr's gRPC
errors and the validator's refusals into it.
Trusts: grainmgr's status codes; the validator's verdict text (its messages escape names).
Never: lets grainmgr's internal error details through (an INTERNAL becomes a fixed message).
"""

from __future__ import annotations

import grpc

from grainhouse_backup.verdicts import Verdict
from grainhouse_proto import backup_pb2 as bpb


class TaskFailure(Exception):
    """Why a task failed, in the words TaskError carries (safe to show)."""

    def __init__(
        self, message: str, *, refusal: str = "", entry: str = "", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.refusal = refusal
        self.entry = entry
        self.retryable = retryable

    @property
    def refusal_number(self) -> int:
        if not self.refusal:
            return 0
        return int(bpb.ArchiveRefusalReason.Value(f"ARCHIVE_REFUSAL_REASON_{self.refusal}"))


def from_rpc(exc: grpc.RpcError, doing: str) -> TaskFailure:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    retryable = code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,  # "busy with another export": retry
    )
    if code == grpc.StatusCode.NOT_FOUND:
        return TaskFailure(f"{doing}: the grain does not exist")
    if code == grpc.StatusCode.INTERNAL:
        details = "internal error in grainmgr"
    return TaskFailure(f"{doing}: {details or code.name.lower()}", retryable=retryable)


def refusal_of(verdict: Verdict) -> TaskFailure:
    return TaskFailure(
        f"archive refused: {verdict.message}", refusal=verdict.reason, entry=verdict.entry
    )
