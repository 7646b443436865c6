"""The start sequence: from a grain's row to its app listening in a sandbox.

Owns: the start path of `Grains.ensure_running` (the checks, the sandbox's spawn, the bridge's
connect, the wait until the app listens, the early first session, the state writes
starting -> running), the crash backoff's check, what a start reads once per package (the
installed files' manifest, the package's record), and where the platform's read-only files
appear inside every grain (RUNTIME_INSIDE, BRIDGE_PROGRAM).
Trusts: the launcher to build sandboxes; packages.py for installed packages; the bridge's
ping to say the app listens (a bridge that fails or never says so fails the start).
Never: starts a grain without holding its lifecycle lock; starts a trashed grain, one that
crashed CRASHES_BEFORE_BACKOFF times within CRASH_WINDOW_SECONDS, or more than max_running
grains; records a grain's end (a failed start kills the sandbox and the watcher in
grain_end.py records it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_grainmgr import grain_platform, metrics

# The app's environment is built by the bridge's own function (stdlib only), whoever starts it.
from grainhouse_grainmgr.bridge import app_env
from grainhouse_grainmgr.control import BridgeClient, GrainEnds, schema, schema_path
from grainhouse_grainmgr.grain_end import GrainWatcher, du
from grainhouse_grainmgr.launcher import Limits, SandboxError, SpawnSpec
from grainhouse_grainmgr.packages import Packages, view_info
from grainhouse_grainmgr.running import EARLY_STEP, Running
from grainhouse_grainmgr.store import GrainRow

if TYPE_CHECKING:
    from grainhouse_grainmgr.grains import LifecycleSettings

# The grains' logger: a start's lines read as before the split.
log = logging.getLogger("grainhouse.grainmgr.grains")

# Where the platform's own read-only files appear inside every grain (see __main__'s
# grain_runtime_paths): fixed places, independent of where the code lives on the host.
RUNTIME_INSIDE = {
    "bridge": "/opt/grainhouse/bridge",
    "proto": "/opt/grainhouse/proto",
    "capnp": "/opt/grainhouse/capnp",
}
BRIDGE_PROGRAM = f"{RUNTIME_INSIDE['bridge']}/bridge.py"
CRASH_WINDOW_SECONDS = 60.0
CRASHES_BEFORE_BACKOFF = 3
# How long opening a grain waits for an export that holds it still (docs/backup.md).
EXPORT_WAIT_SECONDS = 30.0


class GrainStarter(GrainWatcher):
    """The start sequence (part of `grains.Grains`, which holds the state it reads)."""

    packages: Packages
    settings: LifecycleSettings
    busy: dict[str, asyncio.Event]
    _locks: dict[str, asyncio.Lock]
    _installed: dict[str, Any]
    _package_rows: dict[str, Any]

    if TYPE_CHECKING:  # defined by `grains.Grains`

        def lock(self, grain_id: str) -> asyncio.Lock: ...

        async def get(self, grain_id: str) -> GrainRow: ...

        def log_path(self, grain_id: str) -> Path: ...

    async def ensure_running(
        self,
        grain_id: str,
        started: float = 0.0,
        record_later: bool = False,
        first_session: dict[str, Any] | None = None,
    ) -> Running:
        """Start the grain unless it runs; N concurrent callers start exactly one process.

        The grain's row says "running" on return, unless `record_later`: then the write may
        still be in flight (`Running.recorded`, which the caller must await) so that the
        caller's own work overlaps it. `started` (monotonic) is when the caller's request
        came in: the start's steps are logged relative to it. `first_session`: the caller's
        session parameters (with its sessionId); if this call starts the grain, that session is
        opened on the bridge while the app starts (`Running.early`).

        While an export holds the grain still (frozen, or stopped and kept from starting),
        callers wait up to EXPORT_WAIT_SECONDS for it to end, then get UNAVAILABLE."""
        if (exporting := self.busy.get(grain_id)) is not None:
            try:
                await asyncio.wait_for(exporting.wait(), EXPORT_WAIT_SECONDS)
            except TimeoutError:
                raise GrainhouseError(
                    Kind.UNAVAILABLE, "the grain is being backed up; retry later"
                ) from None
        running = self.running.get(grain_id)
        if running is None or not running.ready or running.stopping:
            if not grain_id or len(grain_id) > 64:
                await self.get(grain_id)  # raises the usual error before a lock is made
            try:
                async with self.lock(grain_id):
                    running = self.running.get(grain_id)
                    if running is None or not running.ready or running.stopping:
                        running = await self._start(grain_id, started, first_session)
            except GrainhouseError as exc:
                if exc.kind == Kind.NOT_FOUND and grain_id not in self.running:
                    self._locks.pop(grain_id, None)  # no lock kept per unknown id
                raise
        if not record_later and running.recorded is not None:
            await asyncio.shield(running.recorded)
        return running

    async def _start(
        self, grain_id: str, started: float = 0.0, first_session: dict[str, Any] | None = None
    ) -> Running:
        with metrics.grains_starting.track_inprogress():  # down again however the start ends
            return await self._start_tracked(grain_id, started or time.monotonic(), first_session)

    async def _start_tracked(
        self, grain_id: str, started: float, first_session: dict[str, Any] | None
    ) -> Running:
        steps = {"in": started}
        if not grain_id or len(grain_id) > 64:
            await self.get(grain_id)  # raises the usual error
        # One statement: the row and the app's current package (no second connection).
        found = await self.store.grain_to_start(grain_id)
        if found is None:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        row = found.row
        if row.trashed_at is not None:
            raise GrainhouseError(Kind.CONFLICT, "the grain is in the trash")
        recent = [
            t
            for t in self._crashes.get(grain_id, [])
            if time.monotonic() - t < CRASH_WINDOW_SECONDS
        ]
        self._crashes[grain_id] = recent
        if len(recent) >= CRASHES_BEFORE_BACKOFF:
            raise GrainhouseError(
                Kind.UNAVAILABLE,
                f"the grain crashed {len(recent)} times in a minute; retry in "
                f"{int(CRASH_WINDOW_SECONDS - (time.monotonic() - recent[0])) + 1} s",
            )
        if len(self.running) >= self.settings.max_running:
            raise GrainhouseError(Kind.OVERLOADED, "no capacity to start another grain")
        package = await self._package_for_start(
            row, found.current_package_id, found.current_version
        )
        installed = self._installed.get(package.package_id)
        if installed is None:
            installed = self._installed[package.package_id] = self.packages.installed(
                package.package_id
            )
        manifest = installed.manifest
        listen = manifest.listen
        argv = list(manifest.continue_command)
        app_view_info = view_info(package.manifest)
        config: dict[str, Any] = {
            "argv": argv,
            "env": dict(manifest.env),
            "port": listen.port,
            "unix_socket": listen.unix_socket,
            "start_timeout": self.settings.start_timeout_seconds,
            "view_info": app_view_info,
            "schema": f"{RUNTIME_INSIDE['proto']}/{schema_path().name}",
            "capnp_package": self.settings.capnp_package,
        }
        ends = GrainEnds.make()
        spec = SpawnSpec(
            grain_id=grain_id,
            # -S: no site import (the bridge needs nothing from site-packages).
            argv=[self.settings.bridge_python, "-I", "-S", "-B", BRIDGE_PROGRAM],
            env={"GRAINHOUSE_BRIDGE": json.dumps(config), "LANG": "C.UTF-8"},
            package_dir=str(installed.files_dir),
            var_dir=str(self.var_dir(grain_id)),
            log_path=str(self.log_path(grain_id)),
            pass_fds=(ends.control_theirs.fileno(), ends.streams_theirs.fileno()),
            limits=Limits(
                memory_bytes=self.settings.memory_bytes,
                var_quota_bytes=self.settings.var_quota_bytes,
            ),
            # The sandbox starts the app itself, next to the bridge (which adopts it): the
            # app's start no longer waits for the bridge interpreter's. A relative command
            # (searched on PATH) is left to the bridge.
            child_argv=argv if argv[:1] and argv[0][:1] == "/" else [],
            child_env=app_env(config),
            bridge_in_process=True,
        )
        # The "starting" write runs while the sandbox is built (it is awaited below, before
        # anything else is written: writes to one grain's row stay in order).
        starting = asyncio.ensure_future(self._set_state(grain_id, "starting", None, last_error=""))
        t0 = steps["checked"] = time.monotonic()
        try:
            process = await self.launcher.spawn(spec)
            steps["spawned"] = time.monotonic()
        except SandboxError as exc:
            ends.close()
            with contextlib.suppress(Exception):  # its failure is not the news here
                await starting
            metrics.grain_starts.labels(result="error").inc()
            metrics.spawn_failed(metrics.spawn_failure_reason(exc.kind, exc.message))
            await self._set_state(grain_id, "crashed", "crashed", last_error="sandbox failed")
            log.error("grain %s: sandbox failed: %s", grain_id, exc.message)
            raise GrainhouseError(Kind.UNAVAILABLE, "the grain could not be started") from exc
        except BaseException:
            ends.close()
            with contextlib.suppress(Exception):
                await starting
            raise
        finally:
            ends.close_theirs()
        bridge = BridgeClient(ends, grain_id)
        running = Running(
            grain_id,
            package.package_id,
            bridge,
            pid=process.pid,
            view_info=app_view_info,
            app_version=package.version,
            row=row,
        )
        self.running[grain_id] = running
        metrics.grains_running.set(len(self.running))
        running.watcher = asyncio.create_task(self._watch(running))
        try:
            await bridge.connect(
                grain_platform.make_backend(
                    schema(), running, self.var_dir(grain_id), self.settings.var_quota_bytes, du
                )
            )
            if first_session is not None:
                # newSession needs only the bridge, not the app: it overlaps the app's start
                # instead of following it (its reply waits in the future until taken).
                early = asyncio.ensure_future(bridge.new_session(first_session))
                early.add_done_callback(lambda _: steps.setdefault(EARLY_STEP, time.monotonic()))
                running.early = (first_session["sessionId"], early)
            await asyncio.wait_for(
                self._until_listening(bridge), self.settings.start_timeout_seconds
            )
            steps["listening"] = time.monotonic()
            await starting
        except (TimeoutError, GrainhouseError) as exc:
            reason = "start timeout" if isinstance(exc, TimeoutError) else "bridge failed"
            metrics.grain_starts.labels(result="timeout").inc()
            metrics.spawn_failed("never_listened" if reason == "start timeout" else "app_exited")
            running.failure = reason
            self._drop_early(running)
            await self.kill(running, reason)
            raise GrainhouseError(
                Kind.UNAVAILABLE, f"the app did not start ({reason}); retry later"
            ) from exc
        except BaseException:  # the "starting" write failed, or we were cancelled
            running.failure = "start failed"
            self._drop_early(running)
            await self.kill(running, "start failed")
            raise
        metrics.start_seconds.observe(time.monotonic() - t0)
        metrics.grain_starts.labels(result="ok").inc()
        moved = {}
        if row.package_id != package.package_id:
            moved = {"package_id": package.package_id, "app_version": package.version}
        # A start is a use: the first session's last_used_at rides on this write.
        # grains.now(), spelt out: grains.py imports this module, not the other way round.
        running.used_at = dt.datetime.now(dt.UTC)
        running.recorded = asyncio.ensure_future(
            self._set_state(
                grain_id, "running", "started", row.owner_id, last_used_at=running.used_at, **moved
            )
        )
        running.recorded.add_done_callback(_report_record_failure(grain_id))
        steps["ready"] = time.monotonic()
        running.steps = steps
        running.ready = True
        running.touch()
        return running

    @staticmethod
    def _drop_early(running: Running) -> None:
        """Forget the starter's early session of a failed start (its error is not the news)."""
        if running.early is not None:
            early, running.early = running.early[1], None
            early.cancel()
            if early.done() and not early.cancelled():
                early.exception()  # retrieved: no "exception was never retrieved" warning

    async def _package_for_start(
        self, row: GrainRow, current_id: str | None, current_version: int
    ) -> Any:
        """The app's current version (grains move up at start), else the grain's own."""
        if current_id is not None and (
            row.package_id is None or current_version >= row.app_version
        ):
            current = await self._package_row(current_id)
            if current is not None:
                return current
        if row.package_id is not None:
            own = await self._package_row(row.package_id)
            if own is not None:
                return own
        raise GrainhouseError(Kind.CONFLICT, "the grain's app is not installed")

    async def _package_row(self, package_id: str) -> Any:
        """A package's record, read once: what a start uses of it (id, version, manifest)
        never changes, the id being its content's hash. None if it is not installed."""
        package = self._package_rows.get(package_id)
        if package is None:
            package = await self.store.get_package(package_id)
            if package is not None:
                self._package_rows[package_id] = package
        return package

    async def _until_listening(self, bridge: BridgeClient) -> None:
        # The bridge holds a ping until the app listens (or a quarter second): ask again at
        # once, a sleep here would only add to a slow start.
        while not await bridge.ping():
            await asyncio.sleep(0.001)


def _report_record_failure(grain_id: str) -> Callable[[asyncio.Future[None]], None]:
    """The start's state write runs on after the reply: a failure is logged here (the grain
    runs; its row says "starting" until a later write about it lands)."""

    def done(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.warning("grain %s: recording state=running failed: %s", grain_id, exc)

    return done
