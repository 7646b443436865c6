"""The running grain's end: its watcher, the record of how it ended, and killing it.

Owns: each running grain's watcher (the task that waits for its sandbox's exit or its bridge
going away), what ends with the grain (its place in the running table, its relayed streams,
sessions, stream keys and bridge client), the crash times the start's backoff reads, and the
final stopped/trashed/crashed state write with the grain's size.
Trusts: the launcher's exit status; nothing a grain says (a control channel that breaks while
the sandbox lives gets the grain killed).
Never: starts a grain or takes its lifecycle lock (a stop or a failed start that holds it waits
for the watcher); records one grain's end twice (only its watcher calls `_finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grainhouse_grainmgr import grain_platform, metrics
from grainhouse_grainmgr.launcher import Launcher, SandboxError
from grainhouse_grainmgr.running import Running
from grainhouse_grainmgr.sessions import StreamKeys
from grainhouse_grainmgr.store import Store

# The grains' logger: an end's lines read as before the split.
log = logging.getLogger("grainhouse.grainmgr.grains")


class GrainWatcher:
    """The running grain's end (part of `grains.Grains`, which holds the state it reads)."""

    store: Store
    launcher: Launcher
    keys: StreamKeys
    running: dict[str, Running]
    _crashes: dict[str, list[float]]

    if TYPE_CHECKING:  # defined by `grains.Grains`

        def var_dir(self, grain_id: str) -> Path: ...

        async def _set_state(
            self,
            grain_id: str,
            state: str,
            event: str | None,
            owner: str | None = None,
            **more: Any,
        ) -> None: ...

    async def _watch(self, running: Running) -> None:
        """Wait for the grain's end (or its bridge going away) and record what happened."""
        grain_id = running.grain_id
        exit_wait = asyncio.ensure_future(self.launcher.wait(grain_id))
        waiting: set[asyncio.Future[Any]] = {exit_wait}
        while running.bridge.disconnected is None and not exit_wait.done():
            await asyncio.sleep(0.01)
        if running.bridge.disconnected is not None:
            waiting.add(running.bridge.disconnected)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not exit_wait.done():
            # A bridge whose app exited closes fd 3 and exits itself: give it a moment, so
            # the grain's real exit status is what gets recorded.
            await asyncio.wait({exit_wait}, timeout=2)
        if not exit_wait.done():
            # The control channel broke while the grain lives: garbage on fd 3 or a dead
            # bridge. Either way this grain can no longer be managed: kill it.
            if not running.stopping and not running.failure:
                log.warning("grain %s: control channel lost; killing it", grain_id)
            with contextlib.suppress(SandboxError):
                await self.launcher.kill(grain_id)
        try:
            status = await exit_wait
            reason = status.reason
            detail = (
                "killed: memory limit"
                if status.oom_killed
                else f"exit status {status.code}"
                if status.code is not None
                else f"killed by signal {status.signal}"
            )
        except SandboxError:
            detail, reason = "launcher lost", "launcher-lost"
        await self._finish(running, detail, reason)

    async def _finish(self, running: Running, detail: str, reason: str) -> None:
        grain_id = running.grain_id
        if self.running.get(grain_id) is running:
            del self.running[grain_id]
        metrics.grains_running.set(len(self.running))
        for task in list(running.streams):
            task.cancel()
        running.sessions.clear()
        grain_platform.release_all(running)
        self.keys.forget_grain(grain_id)
        running.bridge.close()
        await running.settled()
        size = await asyncio.to_thread(du, self.var_dir(grain_id))
        row = await self.store.get_grain(grain_id)
        if row is None:
            return  # deleted meanwhile
        if running.failure:
            detail = running.failure
        if running.stopping and not running.failure:
            metrics.grain_stops.labels(reason="stopped").inc()
            state = "trashed" if row.trashed_at is not None else "stopped"
            await self._set_state(grain_id, state, "stopped", size_bytes=size)
        else:
            metrics.grain_stops.labels(reason="crashed").inc()
            self._crashes.setdefault(grain_id, []).append(time.monotonic())
            log.warning("grain %s crashed: %s (%s)", grain_id, detail, reason)
            await self._set_state(
                grain_id, "crashed", "crashed", size_bytes=size, last_error=detail
            )

    async def kill(self, running: Running, why: str) -> None:
        """Kill the grain's sandbox and wait until its watcher recorded the end."""
        with contextlib.suppress(SandboxError):
            await self.launcher.kill(running.grain_id)
        if running.watcher is not None:
            await asyncio.shield(running.watcher)


def du(path: Path) -> int:
    """Bytes used under `path` (allocated blocks), never following symlinks."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
