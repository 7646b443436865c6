"""The backup service's side of the validator: start the confined process, read its verdict.

`validate_file` runs it once for a verdict alone; `Checked` runs it in stream mode (restores)
and hands on the metadata and content it checked, the verdict last (see frames.py). A restore
streams that content into grainmgr's import (a staging directory) and sends the import's
trailer, which alone creates the grain, only after the verdict said ok. A refusal, a crash or
a timeout cancels the import: no grain, nothing left.

Owns: the validator child processes it starts and the read end of their pipes.
Trusts: nothing the child says beyond the frame sizes its kind allows; anything unexpected
from it (a crash, a cut stream, a frame out of place) is a refusal, never an acceptance.
Never: parses an uploaded archive itself, or forks this process (gRPC threads): the
validator is always a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
import sys
from dataclasses import asdict

from grainhouse_backup import archive
from grainhouse_backup.frames import (
    DATA_FRAME,
    F_SETPIPE_SZ,
    FRAME,
    METADATA_FRAME,
    PIPE_SIZE,
    VERDICT_FRAME,
    PipeReader,
)
from grainhouse_backup.verdicts import TRUNCATED_OR_CORRUPT, Limits, Verdict

log = logging.getLogger("grainhouse.backup.validator")
# The largest metadata and verdict frames the parent reads (data frames: what the file lacks).
_MOST = {METADATA_FRAME: archive.MAX_METADATA_BYTES, VERDICT_FRAME: 1024 * 1024}


async def validate_file(path: str, limits: Limits, empty_dir: str, timeout: float) -> Verdict:
    """Run the validator on one archive in its own confined interpreter; return its verdict.

    The archive is the child's stdin, opened read-only here; the child gets no other file,
    an empty environment and no network. A crash, a kill by rlimit or a timeout is a refusal
    (never an acceptance).
    """
    with open(path, "rb") as source:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "grainhouse_backup.validator",
            "--limits", json.dumps(asdict(limits)), "--empty-dir", empty_dir,
            stdin=source, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
        )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive took too long to check")
    try:
        doc = json.loads(out)
        doc["confinement"] = tuple(doc.get("confinement", ()))
        return Verdict(**doc)
    except (ValueError, TypeError):
        log.warning("validator died (exit %s): %s", proc.returncode, err[-500:])
        return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")


class Checked:
    """The parent's side of stream mode: one running validator and its frames.

    Usage: `start`, then `metadata()` (raw metadata, or the refusal), then `data(n)` for each
    listed regular file in order, then `verdict()`; `close()` always (kills a validator still
    running). Anything unexpected from the child (a crash, a cut stream, a frame out of
    place) is a refusal, never an acceptance.
    """

    def __init__(self, proc: asyncio.subprocess.Process, frames: PipeReader) -> None:
        self.proc = proc
        self.frames = frames
        self.refusal: Verdict | None = None

    @classmethod
    async def start(cls, path: str, limits: Limits, empty_dir: str) -> Checked:
        # Our own pipe (both ends close-on-exec here; the child gets the write end as fd 1).
        read_end, write_end = os.pipe()
        try:
            with contextlib.suppress(OSError):  # fewer, larger hand-overs
                fcntl.fcntl(read_end, F_SETPIPE_SZ, PIPE_SIZE)
            with open(path, "rb") as source:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-m", "grainhouse_backup.validator", "--stream",
                    "--limits", json.dumps(asdict(limits)), "--empty-dir", empty_dir,
                    stdin=source, stdout=write_end, stderr=asyncio.subprocess.DEVNULL,
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
                )  # fmt: skip
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # else the pipe never ends when the child does
        return cls(proc, PipeReader(read_end))

    async def _frame(self, most: int = 0) -> tuple[bytes, bytes]:
        """The next frame; a data frame may carry at most `most` bytes. A frame larger than
        its kind allows is never read into memory: it comes back as an unknown kind."""
        try:
            kind, size = FRAME.unpack(await self.frames.read_exactly(FRAME.size))
            if size > (most if kind == DATA_FRAME else _MOST.get(kind, 0)):
                return b"?", b""
            return kind, await self.frames.read_exactly(size)
        except (EOFError, struct.error):
            await self.proc.wait()
            log.warning("validator died (exit %s)", self.proc.returncode)
            return VERDICT_FRAME, b""

    def _refused(self, payload: bytes) -> Verdict:
        try:
            doc = json.loads(payload)
            doc["confinement"] = tuple(doc.get("confinement", ()))
            verdict = Verdict(**doc)
        except (ValueError, TypeError):
            verdict = Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")
        if verdict.ok:  # an acceptance before the content went by is not one
            verdict = Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")
        return verdict

    async def metadata(self) -> bytes | Verdict:
        """The metadata entry's bytes once the checks before content passed, or the refusal."""
        kind, payload = await self._frame()
        if kind == METADATA_FRAME:
            return payload
        return self._refused(payload)

    async def data(self, most: int) -> bytes | Verdict:
        """The next piece (at most `most` bytes) of the current file, or the refusal."""
        most = min(most, archive.CHUNK)  # the validator never sends more in one frame
        kind, payload = await self._frame(most)
        if kind == DATA_FRAME and 0 < len(payload) <= most:
            return payload
        return self._refused(payload if kind == VERDICT_FRAME else b"")

    async def verdict(self) -> Verdict:
        """The final verdict, once every listed file's content went by."""
        kind, payload = await self._frame()
        if kind != VERDICT_FRAME:
            return self._refused(b"")
        try:
            doc = json.loads(payload)
            doc["confinement"] = tuple(doc.get("confinement", ()))
            return Verdict(**doc)
        except (ValueError, TypeError):
            return Verdict(False, TRUNCATED_OR_CORRUPT, "the archive could not be checked")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.frames.close()
        await self.proc.wait()
