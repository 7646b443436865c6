"""The grain's `Platform` for its app (grain.capnp section 4), served by the bridge.

Owns: the abstract Unix socket the app reaches Platform on (`appApiSocket`) and its
connections (at most MAX_CONNECTIONS at once), the app's log lines (prefixed, cut, rate
limited), `getIdentity` answered from the bridge's live sessions, and the forwarding of
`stayAwake` and `getStorageUsage` to grainmgr's `PlatformBackend` (fd 3).
Trusts: grainmgr's PlatformBackend (the bridge trusts grainmgr completely); the bridge's
session table. Not the app: its arguments are bounded here (grainmgr checks them again).
Never: imports anything but the standard library and pycapnp (it runs inside the grain, next
to bridge.py, as part of it); queues a log line; lets a log message forge a line that is not
prefixed as the app's; names another grain or session table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The socket's name, without the leading NUL of an abstract address ("@" in grain.capnp).
API_SOCKET_NAME = "grainhouse/api"
MAX_CONNECTIONS = 16
LOG_MAX_BYTES = 8 * 1024
LOG_BURST = 200
LOG_PER_SECOND = 50.0
# How often, at most, the bridge says how many app log lines the rate limit dropped.
DROP_REPORT_SECONDS = 1.0
MAX_REASON = 200
TRAVERSAL_LIMIT_WORDS = 64 * 1024  # a log message is at most 8 KiB that counts

# C0 controls but tab, and DEL: a log message cannot move a terminal's cursor or colour it.
_CONTROLS = {c: "?" for c in [*range(0x20), 0x7F] if c != 0x09}


class Budget:
    """A token bucket: `burst` at once, then `rate` a second; what it refuses is counted (the
    app's log lines here, a grain's PlatformBackend calls in grainmgr)."""

    def __init__(
        self,
        burst: int,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()
        self.dropped = 0
        self._reported_at = 0.0

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def drops_to_report(self) -> int:
        """Lines dropped since the last report, if a report is due (then counted afresh)."""
        now = self.clock()
        if not self.dropped or now - self._reported_at < DROP_REPORT_SECONDS:
            return 0
        dropped, self.dropped, self._reported_at = self.dropped, 0, now
        return dropped


def log_lines(level: str, message: str) -> str:
    """`[app <level>] <line>` for each line of `message` (cut at LOG_MAX_BYTES), controls
    replaced: what the grain's log gets for one Platform.log call."""
    text = message.encode("utf-8", "replace")[:LOG_MAX_BYTES].decode("utf-8", "ignore")
    lines = text.splitlines() or [""]
    return "".join(f"[app {level}] {line.translate(_CONTROLS)}\n" for line in lines)


def clean_reason(reason: str) -> str:
    """A wake lock's reason as the owner will see it: anything unprintable (controls, line and
    paragraph separators, bidi overrides) becomes a space, spaces are folded; ValueError when
    it is empty or above MAX_REASON characters. grainmgr applies the same rule again."""
    text = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    if not text:
        raise ValueError("a wake lock needs a reason")
    if len(text) > MAX_REASON:
        raise ValueError(f"a wake lock's reason is at most {MAX_REASON} characters")
    return text


def make_platform(
    schema: Any,
    backend: Any,
    session: Callable[[str], dict[str, Any] | None],
    write: Callable[[str], None],
    budget: Budget,
) -> Any:
    """One `Platform` capability for one app connection.

    `backend`: grainmgr's PlatformBackend (fd 3's bootstrap); `session(id)`: a live session's
    params (SessionParams as a dict) or None; `write`: a line for the grain's log."""

    class Platform(schema.Platform.Server):  # type: ignore[misc]  # pycapnp makes the base at run time
        async def log(self, level: Any, message: str, **_: Any) -> None:
            if budget.take():
                write(log_lines(str(level), message))
            dropped = budget.drops_to_report()
            if dropped:
                write(f"[bridge] {dropped} app log lines dropped (rate limit)\n")

        async def getIdentity(self, sessionId: str, _context: Any, **_: Any) -> None:
            params = session(sessionId)
            if params is None:
                raise ValueError("unknown session id")
            _context.results.identity = params.get("identity", {})
            _context.results.permissions = list(params.get("permissions", []))

        async def stayAwake(self, reason: str, _context: Any, **_: Any) -> None:
            reply = await backend.stayAwake(clean_reason(reason))
            _context.results.lock = reply.lock  # grainmgr's WakeLock, passed through

        async def getStorageUsage(self, _context: Any, **_: Any) -> None:
            reply = await backend.getStorageUsage()
            _context.results.sizeBytes = reply.sizeBytes
            _context.results.quotaBytes = reply.quotaBytes

    return Platform()


async def listen(capnp: Any, new_platform: Callable[[], Any], name: str = API_SOCKET_NAME) -> Any:
    """Serve `Platform` on the abstract Unix socket `name`: each connection gets its own
    capability from `new_platform()` (its wake locks end with it). Returns the asyncio
    server (close it to stop listening)."""
    live = 0

    async def accepted(stream: Any) -> None:
        nonlocal live
        if live >= MAX_CONNECTIONS:
            stream.close()
            return
        live += 1
        try:
            server = capnp.TwoPartyServer(
                stream, bootstrap=new_platform(), traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS
            )
            await server.on_disconnect()
        finally:
            live -= 1

    return await capnp.AsyncIoStream.create_unix_server(accepted, path="\0" + name)


async def serve(
    capnp: Any,
    schema: Any,
    control: Any,
    session: Callable[[str], dict[str, Any] | None],
    write: Callable[[str], None],
) -> Any:
    """Serve `Platform` to the app, backed by grainmgr's `PlatformBackend` (the bootstrap
    grainmgr exports on fd 3, `control`'s peer). Returns the asyncio server; OSError if the
    socket cannot be made."""
    backend = control.bootstrap().cast_as(schema.PlatformBackend)
    budget = Budget(LOG_BURST, LOG_PER_SECOND)  # the app's log lines
    return await listen(capnp, lambda: make_platform(schema, backend, session, write, budget))
