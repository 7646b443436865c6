"""Grain transfers: exports held still while they stream, imports adopted as new grains.

Owns: the staging directory `<data_dir>/grainmgr/staging/` (wiped at start: what a dead
grainmgr left), how long a grain is held (frozen, or stopped and kept from starting) for an
export, and turning a fully checked import into a new grain row and storage directory.
Trusts: grains.py for the lifecycle (locks, stop, start) and the grain rows; snapshots.py for
the archive format and every per-entry check of an import; cgroups.py's freezer.
Never: copies a grain's /var for an export (it is read in place while held); leaves a grain
frozen or held after the stream ends, however it ends; adopts an import that was not fully
checked (the caller's trailer check comes first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_grainmgr import cgroups, snapshots
from grainhouse_grainmgr.grains import MAX_TITLE, Grains, du
from grainhouse_grainmgr.running import Running
from grainhouse_grainmgr.store import GrainRow

log = logging.getLogger("grainhouse.grainmgr.transfers")

# How long the kernel gets to freeze a grain before the export stops it instead.
FREEZE_TIMEOUT_SECONDS = 5.0


class Snapshots:
    """Export and import of grains on top of `Grains` (see snapshots.py for the format).

    An export reads the grain's own /var while the grain is held still for exactly as long as
    the stream lasts (`hold`): a running grain is frozen in its cgroup (memory, sockets and
    pid kept; it resumes where it was), else it is stopped and kept from starting. There is
    no second copy of the data. Imports are written to a fresh staging directory first.
    """

    def __init__(self, grains: Grains, root: Path) -> None:
        self.grains = grains
        self.staging = root / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.staging.chmod(0o700)
        for stale in self.staging.iterdir():  # left by a previous grainmgr that died
            shutil.rmtree(stale, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def hold(self, grain_id: str) -> AsyncIterator[tuple[GrainRow, Path]]:
        """Keep the grain still while the body streams its /var; yields (row, var dir).

        Running and freezable: frozen, thawed at the end. Otherwise: stopped, and started
        again at the end if it ran. The grain's lock is held throughout, so stop, restart,
        trash and delete wait for the export; opening it waits (Grains.ensure_running,
        bounded). Whatever ends the body (its end, an error, the client cancelling), the
        grain is thawed or released.
        """
        g = self.grains
        row = await g.get(grain_id)
        if grain_id in g.busy:
            raise GrainhouseError(Kind.CONFLICT, "the grain is busy with another export")
        done = g.busy[grain_id] = asyncio.Event()
        restart = False
        try:
            async with g.lock(grain_id):
                running = g.running.get(grain_id)
                freezer = None
                if running is not None and running.ready and not running.stopping:
                    freezer = await self._freeze_soon(running)
                if freezer is None:
                    restart = grain_id in g.running
                    await g._stop_locked(grain_id)
                    how = "stopped"
                else:
                    how = "frozen"
                log.info("grain %s %s for an export", grain_id, how)
                try:
                    yield row, g.var_dir(grain_id)
                finally:
                    if freezer is not None and running is not None:
                        freezer.thaw()  # synchronous: runs even when the stream was cancelled
                        running.frozen = False
                        running.touch()  # the frozen time was not idle time
                        running.last_ping = time.monotonic()
        finally:
            del g.busy[grain_id]
            done.set()
        if restart:
            task = asyncio.create_task(g.ensure_running(grain_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _freeze_soon(self, running: Running) -> cgroups.Freezer | None:
        """`_freeze` off the event loop; a cancelled caller still gets the grain thawed."""
        freezing = asyncio.ensure_future(asyncio.to_thread(self._freeze, running))
        try:
            return await asyncio.shield(freezing)
        except asyncio.CancelledError:
            freezer = await freezing  # the thread finishes either way: undo what it did
            if freezer is not None:
                freezer.thaw()
                running.frozen = False
            raise

    @staticmethod
    def _freeze(running: Running) -> cgroups.Freezer | None:
        """Freeze `running` in its cgroup; None when it has no freezer or would not freeze."""
        freezer = cgroups.Freezer.of(running.pid, running.grain_id) if running.pid else None
        if freezer is None:
            return None
        running.frozen = True  # before the kernel freezes it: a ping now is not a hang
        running.freezes += 1
        if not freezer.freeze(FREEZE_TIMEOUT_SECONDS):
            running.frozen = False
            log.warning("grain %s did not freeze; stopping it for the export", running.grain_id)
            return None
        return freezer

    def new_import_dir(self) -> Path:
        return snapshots.make_staging(self.staging, "import-")

    async def adopt(
        self, staging: Path, app_id: str, package: Any, owner: str, title: str
    ) -> GrainRow:
        """Turn a fully checked import (staging/var) into a new grain."""
        return await self.grains.add_new(
            app_id,
            package,
            owner,
            title[:MAX_TITLE] or f"Untitled {package.title}",
            await asyncio.to_thread(du, staging / "var"),
            lambda grain_id: os.rename(staging / "var", self.grains.var_dir(grain_id)),
            "imported",
        )
