"""grainmgr's `PlatformBackend` for one running grain (grain.capnp section 4): wake locks and
storage usage, what the bridge's `Platform` forwards to us.

Owns: the grain's wake locks (`Running.wake_locks`: id -> reason) and the `WakeLock`
capabilities that hold them; the grain's last /var measure for getStorageUsage.
Trusts: nothing the grain sends: a reason is cleaned and bounded, locks are capped per grain,
calls are rate limited per grain (refused beyond the budget, never queued), a measure is never
taken more often than every MEASURE_SECONDS however often it is asked for.
Never: acts on another grain (one backend per running grain, made at its start); keeps a
grain's locks past its stop (they live on its `Running`, which goes with it); blocks the
event loop (the measure runs in a thread).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grainhouse_grainmgr import metrics
from grainhouse_grainmgr.bridge_platform import Budget, clean_reason
from grainhouse_grainmgr.running import Running

MAX_WAKE_LOCKS = 4
MEASURE_SECONDS = 10.0
# Calls a grain may make on its backend: a burst, then a steady rate (each call costs
# grainmgr's event loop; a grain that calls faster is refused, never queued).
CALLS_BURST = 100
CALLS_PER_SECOND = 20.0

log = logging.getLogger("grainhouse.grainmgr.platform")

_ids = itertools.count(1)


def release(running: Running, lock_id: int) -> None:
    """End one wake lock (idempotent); the grain may idle out from now on."""
    if running.wake_locks.pop(lock_id, None) is not None:
        metrics.wake_locks.dec()
        running.touch()  # its idle time counts from the release, not from the last request


def release_all(running: Running) -> None:
    """The grain stopped: its locks end with it."""
    if running.wake_locks:
        metrics.wake_locks.dec(len(running.wake_locks))
        running.wake_locks.clear()


def make_backend(
    schema: Any,
    running: Running,
    var_dir: Path,
    quota_bytes: int,
    measure: Callable[[Path], int],
) -> Any:
    """The `PlatformBackend` capability grainmgr exports to one grain's bridge on fd 3."""
    backend_class, _ = _classes(schema)
    return backend_class(running, var_dir, quota_bytes, measure)


@functools.cache
def _classes(schema: Any) -> tuple[type, type]:
    """The server classes for `schema`, made once (a start must not pay for class creation)."""

    class WakeLock(schema.WakeLock.Server):  # type: ignore[misc]  # pycapnp makes the base at run time
        def __init__(self, running: Running, lock_id: int) -> None:
            self.running = running
            self.lock_id = lock_id

        async def release(self, **_: Any) -> None:
            release(self.running, self.lock_id)

        def __del__(self) -> None:
            # The last reference was dropped (the app's connection or fd 3 closed): released.
            release(self.running, self.lock_id)

    class Backend(schema.PlatformBackend.Server):  # type: ignore[misc]  # as above
        def __init__(
            self, running: Running, var_dir: Path, quota_bytes: int, measure: Callable[[Path], int]
        ) -> None:
            self.running = running
            self.var_dir = var_dir
            self.quota_bytes = quota_bytes
            self.measure = measure
            self.size = 0
            self.measured_at = -MEASURE_SECONDS
            self.budget = Budget(CALLS_BURST, CALLS_PER_SECOND)

        def _spend(self) -> None:
            if not self.budget.take():
                metrics.platform_calls_refused.inc()
                raise ValueError(f"too many calls (at most {CALLS_PER_SECOND:.0f} a second)")

        async def stayAwake(self, reason: str, _context: Any, **_: Any) -> None:
            self._spend()
            running = self.running
            text = clean_reason(reason)
            if running.stopping:
                raise ValueError("the grain is stopping")
            if len(running.wake_locks) >= MAX_WAKE_LOCKS:
                raise ValueError(f"too many wake locks (at most {MAX_WAKE_LOCKS} per grain)")
            lock_id = next(_ids)
            running.wake_locks[lock_id] = text
            metrics.wake_locks.inc()
            log.info("grain %s stays awake: %s", running.grain_id, text)
            _context.results.lock = WakeLock(running, lock_id)

        async def getStorageUsage(self, _context: Any, **_: Any) -> None:
            self._spend()
            if time.monotonic() - self.measured_at >= MEASURE_SECONDS:
                self.measured_at = time.monotonic()  # one measure at a time, however many ask
                self.size = await asyncio.to_thread(self.measure, self.var_dir)
            _context.results.sizeBytes = self.size
            _context.results.quotaBytes = self.quota_bytes

    return Backend, WakeLock
