"""A running grain as grainmgr holds it in memory, and the line that says where its start went.

Owns: `Running` (a grain with a live sandbox: its bridge client, sessions, streams and the
state of its start), `OpenedSession` (what OpenSession answers), which grain states are live,
and the `start steps` log line (read by bench/bench_grains.py).
Trusts: grains.py, the only writer of these records.
Never: talks to the database, the launcher or a bridge (grains.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from grainhouse_grainmgr.control import BridgeClient
from grainhouse_grainmgr.sessions import Session, Ticket
from grainhouse_grainmgr.store import GrainRow


@dataclass
class Running:
    """A grain with a live sandbox."""

    grain_id: str
    package_id: str
    bridge: BridgeClient
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    sessions: dict[str, Session] = field(default_factory=dict)
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    stopping: bool = False
    ready: bool = False  # the app listens; until then only the starter holds this grain
    last_ping: float = field(default_factory=time.monotonic)
    failure: str = ""  # set when grainmgr kills a grain that failed to start
    quota_reported: int = 0  # launcher quota events already reported
    watcher: asyncio.Task[None] | None = None
    pid: int = 0  # host pid of the grain's init (finds its cgroup freezer)
    frozen: bool = False  # held still by an export: housekeeping leaves it alone
    freezes: int = 0  # exports that froze it so far (a ping that spanned one proves nothing)
    view_info: dict[str, Any] = field(default_factory=dict)  # of the package it runs
    app_version: int = 0
    # Monotonic stamps of the start's steps, until the first session logs them (START_STEPS).
    steps: dict[str, float] | None = None
    # The write of state=running (and the started event), which may still be in flight when
    # the grain is ready; every later state write about this grain awaits it first.
    recorded: asyncio.Future[None] | None = None
    used_at: dt.datetime | None = None  # last_used_at as that write sets it
    row: GrainRow | None = None  # as read at the start, under the grain's lock
    # The starter's own session, opened on the bridge while the app starts: (session id, the
    # newSession call). open_session takes it instead of calling newSession after the start.
    early: tuple[str, asyncio.Future[Any]] | None = None
    # Wake locks the grain holds (Platform.stayAwake): id -> reason; no idle stop while any is.
    wake_locks: dict[int, str] = field(default_factory=dict)

    async def settled(self) -> None:
        """The start's own write is done (or failed: then a later write repairs the row)."""
        if self.recorded is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.recorded)

    def touch(self) -> None:
        self.last_activity = time.monotonic()


# States that only hold while this grainmgr runs the grain: reset to stopped at its next start.
LIVE_STATES = ("starting", "running", "stopping")

# One line per cold start, read by bench/bench_grains.py: where a cold open's time goes.
START_STEPS = "start steps"
STEP_NAMES = (
    ("checked", "records and checks before the spawn"),
    ("spawned", "sandbox built, bridge and app exec'd"),
    ("listening", "the app's own start, until the bridge sees it listen"),
    ("ready", "marked ready (the state=running write overlaps the session step)"),
    ("session", "session opened on the bridge, ticket issued"),
)
# Not in order with the steps above: when the starter's session was open on the bridge (it is
# opened while the app starts, so usually before `listening`).
EARLY_STEP = "opened"


def steps_line(grain_id: str, steps: dict[str, float]) -> str:
    """`start steps <grain> at=<monotonic s> checked=<ms> spawned=<ms> ...` (ms since `in`)."""
    t0 = steps["in"]
    names = [name for name, _ in STEP_NAMES] + [EARLY_STEP]
    parts = [f"{name}={(steps[name] - t0) * 1000:.1f}" for name in names if name in steps]
    return f"{START_STEPS} {grain_id} at={t0:.4f} {' '.join(parts)}"


@dataclass
class OpenedSession:
    session_id: str
    ticket: Ticket
    row: GrainRow
    view_info: dict[str, Any]
