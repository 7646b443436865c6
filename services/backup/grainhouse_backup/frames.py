"""Stream mode's wire format: frames on the pipe from the validator to its parent.

The validator's stdout carries frames (`kind` byte, 4-byte big-endian length, payload): `M`
the metadata entry, sent only once every check that needs no content passed (names, types,
structure, sizes, metadata, the file list against the entries); then `D` frames, the content
of each listed regular file in list order (at most CHUNK bytes each, never spanning two
files), each checked (size, inflation, CRC) before it is sent; finally one `V`, the verdict
(JSON). A file's SHA-256 is only known after its last `D`, so the parent must treat content
as unvalidated until `V` says ok.

Owns: the frame format, the writer (`FrameSink`, the validator's side) and the exact-size
reader (`PipeReader`, the parent's side).
Trusts: nothing it reads: sizes are checked by the caller (`validation.Checked`) before a
payload is read.
Never: interprets a payload, or buffers one beyond the single read that returns it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

FRAME = struct.Struct(">cI")  # kind, payload length
METADATA_FRAME, DATA_FRAME, VERDICT_FRAME = b"M", b"D", b"V"
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux)
PIPE_SIZE = 1024 * 1024  # the default /proc/sys/fs/pipe-max-size


class FrameSink:
    """The validator's side of stream mode: frames written straight to a (blocking) pipe fd,
    header and payload in one writev: no copy into a userspace buffer on the way."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _frame(self, kind: bytes, payload: bytes | memoryview) -> None:
        size = len(payload)
        done = os.writev(self.fd, [FRAME.pack(kind, size), payload])
        while done < FRAME.size + size:  # a signal cut the write short: finish it
            if done < FRAME.size:
                done += os.write(self.fd, FRAME.pack(kind, size)[done:])
            else:
                done += os.write(self.fd, memoryview(payload)[done - FRAME.size :])

    def metadata(self, raw: bytes) -> None:
        self._frame(METADATA_FRAME, raw)

    def data(self, chunk: bytes | memoryview) -> None:
        self._frame(DATA_FRAME, chunk)

    def verdict(self, doc: dict[str, Any]) -> None:
        self._frame(VERDICT_FRAME, json.dumps(doc).encode())


class PipeReader:
    """Exact-size reads from a pipe on the running event loop, each payload in one copy.

    asyncio's StreamReader copies every byte three times (the transport's read, its buffer,
    the slice handed out); here a payload that is already in the pipe is one os.read, and
    the loop is only asked to wait (add_reader) when the pipe is empty.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)

    async def read_exactly(self, size: int) -> bytes:
        """`size` bytes; EOFError if the writer closed before (a dead validator)."""
        parts: list[bytes] = []
        left = size
        while left > 0:
            try:
                got = os.read(self.fd, min(left, PIPE_SIZE))
            except BlockingIOError:
                await self._readable()
                continue
            if not got:
                raise EOFError
            parts.append(got)
            left -= len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
