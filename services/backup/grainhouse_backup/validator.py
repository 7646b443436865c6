"""The hostile-archive validator: one confined process per archive, one verdict as JSON.

Owns: the confinement of the process that applies the rules (archive_rules.py), and its
command line.
Trusts: nothing in the archive. Its parent (the backup service) for the limits on argv.
Never: writes a file, opens a network socket, or imports anything after it confined itself
(every module it needs is imported at start, before the chroot).

Run as `python -m grainhouse_backup.validator --limits JSON` with the archive open read-only
on stdin (a regular file, so the central directory can be read) and the verdict written to
stdout. Before it reads a byte it confines itself (see `confine`): new user and network
namespaces (no network at all), chroot into an empty directory when it can, no new
privileges, and rlimits on address space, CPU, file size and open files. The parent never
forks itself (gRPC threads): it starts this as a fresh interpreter (validation.py).

Stream mode (`--stream`, used by restores; `validation.Checked` is the parent's side): the
archive is read once and stdout carries frames (frames.py): the metadata, then the content of
each listed regular file, each checked before it is sent, the verdict last.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import resource
import sys
from dataclasses import asdict
from typing import Any

from grainhouse_backup.archive_rules import check_archive
from grainhouse_backup.frames import F_SETPIPE_SZ, PIPE_SIZE, FrameSink
from grainhouse_backup.verdicts import SIZE_BOMB, Limits, Verdict

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38


def confine(limits: Limits, empty_dir: str | None) -> list[str]:
    """Confine this process before it reads the archive; returns what could be applied.

    Each step is best effort on kernels that forbid it (unprivileged user namespaces may be
    off), and the list of applied steps goes into the verdict so tests can assert on it.
    """
    applied = []
    # Codecs load lazily from the encodings package: load the ones we use before the chroot.
    "x".encode("unicode_escape").decode("ascii")
    "x".encode("cp437").decode("cp437")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        applied.append("no_new_privs")
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) == 0:
        applied.append("netns")
        if empty_dir and os.path.isdir(empty_dir):
            try:
                os.chroot(empty_dir)
                os.chdir("/")
                applied.append("chroot")
            except OSError:
                pass
    # No file is opened for writing; the cap keeps even stdout (if a file) to a verdict.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.max_cpu_seconds, limits.max_cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.max_memory_bytes, limits.max_memory_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))
    applied.append("rlimits")
    return applied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grainhouse_backup.validator")
    parser.add_argument("--limits", default="{}")
    parser.add_argument("--empty-dir", default=None)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args(argv)
    limits = Limits(**json.loads(args.limits))
    out = sys.stdout
    applied = confine(limits, args.empty_dir)
    source = os.fdopen(0, "rb", buffering=0)
    sink = None
    if args.stream:
        with contextlib.suppress(OSError):  # fewer, larger hand-overs to the parent
            fcntl.fcntl(1, F_SETPIPE_SZ, PIPE_SIZE)
        sink = FrameSink(1)
    try:
        verdict = check_archive(source, limits, sink)
    except MemoryError:
        verdict = Verdict(False, SIZE_BOMB, "the archive needs too much memory to check")
    doc: dict[str, Any] = asdict(verdict)
    doc["confinement"] = list(applied)
    if sink is not None:
        sink.verdict(doc)
        return 0
    out.write(json.dumps(doc))
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
