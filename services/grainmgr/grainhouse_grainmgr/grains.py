"""Grains: records, storage directories and the lifecycle state machine.

Owns: `<data_dir>/grainmgr/grains/<grain_id>/` (var/ = the grain's /var, log = its log), the
`grains` rows (through store.py), the table of running grains with their bridge clients,
sessions and relayed streams, the per-grain lifecycle locks, and the grain events on NATS.
Trusts: the launcher to build sandboxes; packages.py for installed packages; nothing a grain
says (a bridge that misbehaves on fd 3 is treated as a crash and its grain killed).
Never: forks (the launcher does); runs two processes for one grain (one lock per grain, and
every start and stop holds it); lets a trashed grain start.

States (grainmgr.proto GrainState): stopped -> starting -> running -> stopping -> stopped;
running -> crashed (unexpected exit, bridge gone, start timeout); any -> trashed -> stopped
(restore); trashed/any -> deleted (row and storage gone).

The start sequence is in grain_start.py, the running grain's end (its watcher) in
grain_end.py: `Grains` inherits both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainhouse_common.bus import Bus
from grainhouse_common.errors import GrainhouseError, Kind

# Re-exported: the start's environment is the bridge's own function (tests check it is).
from grainhouse_grainmgr.bridge import app_env as app_env
from grainhouse_grainmgr.control import MAX_OPEN_STREAMS
from grainhouse_grainmgr.grain_end import du as du
from grainhouse_grainmgr.grain_start import RUNTIME_INSIDE as RUNTIME_INSIDE
from grainhouse_grainmgr.grain_start import GrainStarter
from grainhouse_grainmgr.launcher import Launcher
from grainhouse_grainmgr.packages import Packages, view_info
from grainhouse_grainmgr.running import LIVE_STATES, OpenedSession, Running, steps_line
from grainhouse_grainmgr.sessions import Session, StreamKeys, Ticket, new_session_id
from grainhouse_grainmgr.store import GrainRow, Store

log = logging.getLogger("grainhouse.grainmgr.grains")

MAX_TITLE = 200
PING_TIMEOUT_SECONDS = 10.0


def new_grain_id() -> str:
    """160 random bits, base32 lowercase without padding (32 chars)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower().rstrip("=")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LifecycleSettings:
    idle_stop_seconds: float = 90.0
    trash_retention_seconds: float = 30 * 86400.0
    start_timeout_seconds: float = 30.0
    stop_grace_seconds: int = 10
    max_running: int = 200
    memory_bytes: int = 512 * 1024 * 1024
    var_quota_bytes: int = 1024 * 1024 * 1024
    bridge_python: str = "/usr/bin/python3"
    ping_interval_seconds: float = 10.0
    capnp_package: str = ""


class Grains(GrainStarter):
    def __init__(
        self,
        store: Store,
        packages: Packages,
        launcher: Launcher,
        bus: Bus,
        root: Path,
        settings: LifecycleSettings,
        auth: Any = None,
    ) -> None:
        self.store = store
        self.packages = packages
        self.launcher = launcher
        self.bus = bus
        self.root = root / "grains"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        self.settings = settings
        self.auth = auth  # grainhouse_grainmgr.authlink.AuthLink or None
        self.keys = StreamKeys()
        self.running: dict[str, Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._crashes: dict[str, list[float]] = {}
        # Installed packages never change (their id is their content's hash): their files'
        # manifest and their records (only the unchanging fields are read) are read once.
        self._installed: dict[str, Any] = {}
        self._package_rows: dict[str, Any] = {}
        # Grains being exported (no second export at once); set when the export ends.
        self.busy: dict[str, asyncio.Event] = {}

    # -- paths and records --------------------------------------------------------------------

    def grain_dir(self, grain_id: str) -> Path:
        return self.root / grain_id

    def var_dir(self, grain_id: str) -> Path:
        return self.grain_dir(grain_id) / "var"

    def log_path(self, grain_id: str) -> Path:
        return self.grain_dir(grain_id) / "log"

    def lock(self, grain_id: str) -> asyncio.Lock:
        lock = self._locks.get(grain_id)
        if lock is None:
            lock = self._locks[grain_id] = asyncio.Lock()
        return lock

    async def get(self, grain_id: str) -> GrainRow:
        if not grain_id:
            raise GrainhouseError(Kind.INVALID, "grain_id is required")
        if len(grain_id) > 64:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        running = self.running.get(grain_id)
        if running is not None and running.recorded is not None and not running.recorded.done():
            # A cold open replies before its state=running write lands: a read that follows
            # the reply (through grainmgr) still sees it.
            await running.settled()
        row = await self.store.get_grain(grain_id)
        if row is None:
            raise GrainhouseError(Kind.NOT_FOUND, "no such grain")
        return row

    async def writes_settled(self) -> None:
        """Every start's state write still in flight is done: a list of rows read after this
        shows what the replies to those starts said."""
        pending = [
            r.recorded for r in self.running.values() if r.recorded and not r.recorded.done()
        ]
        if pending:
            await asyncio.wait(pending)

    async def _set_state(
        self, grain_id: str, state: str, event: str | None, owner: str | None = None, **more: Any
    ) -> None:
        # A live state may be lost in a crash without harm (recover_after_restart resets it):
        # its commit does not wait for the disk, which is on the way to a cold open's reply.
        durable = state not in LIVE_STATES
        await self.store.update_grain(grain_id, state=state, durable=durable, **more)
        if event is not None:
            await self.publish(grain_id, event, state, more.get("last_error", ""), owner)

    async def publish(
        self, grain_id: str, event: str, state: str, reason: str = "", owner: str | None = None
    ) -> None:
        if owner is None:
            row = await self.store.get_grain(grain_id)
            owner = row.owner_id if row else ""
        await self.bus.publish(
            f"grainhouse.grainmgr.grain.{event}",
            {
                "grain_id": grain_id,
                "owner_account_id": owner,
                "state": state,
                "at": now().isoformat(),
                "reason": reason,
            },
        )

    # -- create -------------------------------------------------------------------------------

    async def create(
        self,
        app_id: str,
        package_id: str,
        action_index: int | None,
        action_name: str | None,
        title: str,
        owner: str,
    ) -> GrainRow:
        if not app_id:
            raise GrainhouseError(Kind.INVALID, "app_id is required")
        if not owner:
            raise GrainhouseError(Kind.INVALID, "owner_account_id is required")
        if len(title) > MAX_TITLE:
            raise GrainhouseError(Kind.INVALID, f"title is longer than {MAX_TITLE} characters")
        if package_id:
            package = await self.packages.get(package_id)
            if package.app_id != app_id:
                raise GrainhouseError(Kind.NOT_FOUND, "no such package for this app")
        else:
            current = await self.store.current_package(app_id)
            if current is None:
                raise GrainhouseError(Kind.NOT_FOUND, "no such app")
            package = current
        actions = package.manifest.get("actions", [])
        if action_name:
            if not any(a.get("noun") == action_name for a in actions):
                raise GrainhouseError(Kind.NOT_FOUND, f"no action {action_name!r}")
        elif (action_index or 0) >= len(actions):
            raise GrainhouseError(Kind.NOT_FOUND, f"no action number {action_index}")
        return await self.add_new(
            app_id,
            package,
            owner,
            title or f"Untitled {package.title}",
            0,
            lambda grain_id: self.var_dir(grain_id).mkdir(mode=0o700),
            "created",
        )

    async def add_new(
        self,
        app_id: str,
        package: Any,
        owner: str,
        title: str,
        size_bytes: int,
        fill: Callable[[str], None],
        event: str,
    ) -> GrainRow:
        """A new stopped grain: its row, registered with auth, its storage directory made and
        `fill`ed (given the new grain id: creates or moves in `var/`), then event `event`. A
        failure leaves no directory behind."""
        grain_id = new_grain_id()
        row = GrainRow(
            grain_id=grain_id,
            app_id=app_id,
            package_id=package.package_id,
            app_version=package.version,
            app_title=package.title,
            owner_id=owner,
            title=title,
            state="stopped",
            size_bytes=size_bytes,
            created_at=now(),
            last_used_at=None,
            trashed_at=None,
            trash_expires_at=None,
            last_error="",
        )
        if self.auth is not None:
            await self.auth.register(
                grain_id, owner, app_id, view_info(package.manifest), row.title
            )
        self.grain_dir(grain_id).mkdir(mode=0o711)
        try:
            fill(grain_id)
            await self.store.add_grain(row)
        except BaseException:
            shutil.rmtree(self.grain_dir(grain_id), ignore_errors=True)
            raise
        await self.publish(grain_id, event, "stopped")
        return row

    async def update_title(self, grain_id: str, title: str) -> GrainRow:
        row = await self.get(grain_id)
        if not title:
            raise GrainhouseError(Kind.INVALID, "title must not be empty")
        if len(title) > MAX_TITLE:
            raise GrainhouseError(Kind.INVALID, f"title is longer than {MAX_TITLE} characters")
        if row.trashed_at is not None:
            raise GrainhouseError(Kind.CONFLICT, "the grain is in the trash")
        await self.store.update_grain(grain_id, title=title)
        return await self.get(grain_id)

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, grain_id: str) -> GrainRow:
        await self.get(grain_id)
        async with self.lock(grain_id):
            await self._stop_locked(grain_id)
        return await self.get(grain_id)

    async def _stop_locked(self, grain_id: str) -> None:
        running = self.running.get(grain_id)
        if running is None:
            row = await self.get(grain_id)
            if row.state in ("crashed", "starting", "running", "stopping"):
                await self.store.update_grain(grain_id, state="stopped")
            return
        running.stopping = True
        await running.settled()
        await self.store.update_grain(grain_id, state="stopping")
        for task in list(running.streams):
            task.cancel()
        grace = self.settings.stop_grace_seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.bridge.shutdown(grace), grace + 2)
        try:
            if running.watcher is not None:  # set at every start, right after the spawn
                await asyncio.wait_for(asyncio.shield(running.watcher), 2)
        except TimeoutError:
            await self.kill(running, "stop")

    async def restart(self, grain_id: str) -> GrainRow:
        row = await self.get(grain_id)
        if row.trashed_at is not None:
            raise GrainhouseError(Kind.CONFLICT, "the grain is in the trash")
        async with self.lock(grain_id):
            await self._stop_locked(grain_id)
            self._crashes.pop(grain_id, None)
            await (await self._start(grain_id)).settled()
        return await self.get(grain_id)

    # -- trash and delete ---------------------------------------------------------------------

    async def trash(self, grain_id: str) -> GrainRow:
        row = await self.get(grain_id)
        if row.trashed_at is not None:
            return row
        async with self.lock(grain_id):
            t = now()
            expires = t + dt.timedelta(seconds=self.settings.trash_retention_seconds)
            await self.store.update_grain(grain_id, trashed_at=t, trash_expires_at=expires)
            await self._stop_locked(grain_id)
            await self._set_state(grain_id, "trashed", "trashed")
        return await self.get(grain_id)

    async def restore(self, grain_id: str) -> GrainRow:
        row = await self.get(grain_id)
        if row.trashed_at is None:
            return row
        async with self.lock(grain_id):
            await self._set_state(
                grain_id, "stopped", "restored", trashed_at=None, trash_expires_at=None
            )
        return await self.get(grain_id)

    async def delete(self, grain_id: str, skip_trash: bool) -> None:
        row = await self.get(grain_id)
        if row.trashed_at is None and not skip_trash:
            raise GrainhouseError(Kind.CONFLICT, "move the grain to the trash first")
        async with self.lock(grain_id):
            await self._stop_locked(grain_id)
            await self.store.delete_grain(grain_id)
            await asyncio.to_thread(shutil.rmtree, self.grain_dir(grain_id), True)
        self._locks.pop(grain_id, None)
        self._crashes.pop(grain_id, None)
        if self.auth is not None:
            await self.auth.forget(grain_id)
        await self.bus.publish(
            "grainhouse.grainmgr.grain.deleted",
            {
                "grain_id": grain_id,
                "owner_account_id": row.owner_id,
                "state": "deleted",
                "at": now().isoformat(),
                "reason": "",
            },
        )

    # -- sessions and streams -----------------------------------------------------------------

    async def open_session(self, grain_id: str, params: dict[str, Any]) -> OpenedSession:
        started = time.monotonic()
        row: GrainRow | None = None
        running = self.running.get(grain_id)
        if running is not None and running.ready and not running.stopping:
            row = await self.get(grain_id)
            if row.trashed_at is not None:
                raise GrainhouseError(Kind.CONFLICT, "the grain is in the trash")
        session_id = new_session_id()
        params = {**params, "sessionId": session_id}
        running = await self.ensure_running(
            grain_id, started, record_later=True, first_session=params
        )
        if row is None:
            # Not running a moment ago: the start read the row (and refused a trashed grain)
            # under the grain's lock; no second read on the way to the first byte.
            row = running.row or await self.get(grain_id)
        steps, running.steps = running.steps, None  # set until a cold start's first session
        opening: Awaitable[Any]
        if running.early is not None and running.early[0] == session_id:
            opening, running.early = running.early[1], None  # this call started the grain
        else:
            opening = running.bridge.new_session(params)
        # The bridge call and the row's write (a cold start's state=running) overlap; the
        # reply's row is the one read above with what this call and the start changed (no
        # second read on the way to the first byte).
        handle, used = await asyncio.gather(
            opening, self._touch_row(running, first=steps is not None)
        )
        running.sessions[session_id] = Session(session_id, grain_id, handle)
        running.touch()
        ticket = self.keys.issue(grain_id, session_id)
        row = dataclasses.replace(
            row,
            state="running",
            last_used_at=used,
            last_error="",
            package_id=running.package_id,
            app_version=running.app_version or row.app_version,
        )
        if steps is not None:  # the first session of a cold start says where it went
            steps["session"] = time.monotonic()
            log.info("%s", steps_line(grain_id, steps))
        return OpenedSession(session_id, ticket, row, running.view_info)

    async def _touch_row(self, running: Running, *, first: bool) -> dt.datetime:
        """Record a use of the grain; returns the last_used_at written."""
        if first and running.used_at is not None:
            # The start's own write sets it. The reply does not wait for that write (a
            # DB round trip on every cold open's way): reads through grainmgr (`get`,
            # `writes_settled`) and every later write of this row wait for it instead.
            return running.used_at
        if running.recorded is not None:
            await asyncio.shield(running.recorded)  # in order: one row, one writer at a time
        used = now()
        await self.store.update_grain(running.grain_id, last_used_at=used, durable=False)
        return used

    def open_stream_keys(self, grain_id: str, session_id: str, count: int = 1) -> list[Ticket]:
        """`count` one-time keys for streams of a live session (the caller bounds `count`)."""
        running = self.running.get(grain_id)
        if running is None or not running.ready or session_id not in running.sessions:
            raise GrainhouseError(Kind.NOT_FOUND, "no such session; open a new one")
        running.touch()
        running.sessions[session_id].last_used = time.monotonic()
        return [self.keys.issue(grain_id, session_id) for _ in range(count)]

    async def connect_stream(
        self, grain_id: str, session_id: str
    ) -> tuple[socket.socket, Callable[[], None], Callable[[], None]]:
        """Relay's connector: a socket connected to the grain's app for one stream of a
        session (the bridge connects it and hands it over on fd 4; ours to close)."""
        running = self.running.get(grain_id)
        if running is None or running.stopping or session_id not in running.sessions:
            raise GrainhouseError(Kind.NOT_FOUND, "the session ended")
        if len(running.streams) >= MAX_OPEN_STREAMS:
            raise GrainhouseError(Kind.OVERLOADED, "the grain has too many open streams")
        sock = await running.bridge.open_stream(session_id)
        session = running.sessions.get(session_id)
        if running.stopping or session is None or self.running.get(grain_id) is not running:
            sock.close()  # the grain stopped (or the session ended) while the bridge connected
            raise GrainhouseError(Kind.NOT_FOUND, "the session ended")
        task = asyncio.current_task()
        assert task is not None
        running.streams.add(task)  # cancelled (the splice aborted) when the grain stops
        running.touch()
        session.open_streams += 1

        def done() -> None:
            running.streams.discard(task)
            running.touch()
            session.open_streams -= 1
            session.last_used = time.monotonic()

        return sock, running.touch, done

    async def recover_after_restart(self) -> None:
        """Grains recorded as live belong to a previous grainmgr whose sandboxes are gone."""
        for grain_id in await self.store.grains_in_states(LIVE_STATES):
            await self.store.update_grain(grain_id, state="stopped")

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(g) for g in list(self.running)), return_exceptions=True)
