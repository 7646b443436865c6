"""One thread that runs an archive writer's calls in order while the event loop keeps receiving.

Owns: a bounded queue of pending writer calls (at most `DEPTH` parts, so memory stays flat) and
the thread that drains it; the first error a call raised.
Trusts: the calls it is given to be the writer's own (ArchiveWriter and a hash); they run on
its thread only, never concurrently with each other.
Never: runs a call after an earlier one failed or after `abandon`; outlives `close`/`abandon`.

Why: the export stream arrives on the event loop while deflate, CRC-32 and SHA-256 (all of
which release the GIL on large buffers) run here, so receiving and compressing overlap on two
cores instead of taking turns; one thread hop per part through asyncio.to_thread made the
loop wait for every write before it read the next part.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

DEPTH = 16  # parts in flight: ≤ 16 MiB with grainmgr's 1 MiB data parts

_STOP = object()


class WriterThread:
    def __init__(self, name: str = "archive-writer") -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=DEPTH)
        self._error: BaseException | None = None
        self._dropped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._dropped:
                continue  # drain without running: the archive is being abandoned
            fn, args = item
            try:
                fn(*args)
            except BaseException as exc:  # surfaced to the loop at its next put or close
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    async def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)`; waits (off the loop) only while `DEPTH` calls are pending."""
        self._raise()
        try:
            self._queue.put_nowait((fn, args))
        except queue.Full:
            await asyncio.to_thread(self._queue.put, (fn, args))

    async def close(self) -> None:
        """Wait until every queued call has run; raise the first error one of them raised."""
        await asyncio.to_thread(self._queue.put, _STOP)
        await asyncio.to_thread(self._thread.join)
        self._raise()

    def abandon(self) -> None:
        """Stop running calls and wait for the one in progress (synchronous: safe while the
        caller is being cancelled). Afterwards nothing touches the writer any more."""
        self._dropped = True
        while True:
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()  # make room: dropped anyway
        self._thread.join()
