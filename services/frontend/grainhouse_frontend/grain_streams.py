"""The streams of each origin: grainmgr sessions behind origins, and the pool of relay streams.

A request borrows a stream here (a pooled one if any, else a new one through grainmgr) and
gives it back when its response is done; a WebSocket gets a fresh stream of its own.

Owns: the grainmgr session of each origin (opened with OpenSession, reopened when the role
changes or grainmgr forgot it), the pool of idle relay streams per origin and its idle limit.
Trusts: grain_proxy.py to have authorized the request (the origin and decision given here are
auth's); grainmgr for sessions and relay tickets; grain_relay.py to turn a ticket into a
stream.
Never: decides who may reach a grain (grain_proxy.py does); lends a WebSocket's stream to the
pool; keeps a stream idle past POOL_IDLE_SECONDS (an open stream keeps a grain running).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import grpc

from grainhouse_frontend.grain_refusal import Denied
from grainhouse_frontend.grain_relay import RelayStream, relay_connect, upstream_connect
from grainhouse_frontend.grain_upstream import Upstream
from grainhouse_frontend.origins import Decision, Origin
from grainhouse_proto import common_pb2, grainmgr_pb2, grainmgr_pb2_grpc

# Idle streams kept per origin. Every request that finds the pool empty costs a gRPC
# OpenStream, a relay handshake and new connections in the bridge and the app (≈1 ms of CPU
# across the processes, measured by bench/bench_grains.py), so the pool must cover a client's
# usual concurrency (browsers open 6 per host, API clients more); the bridge takes 256 streams.
POOL_PER_ORIGIN = 64
# A pooled stream counts as traffic for grainmgr (an open stream keeps a grain running), so
# idle ones are closed well before grainmgr's idle stop (90 s by default).
POOL_IDLE_SECONDS = 20.0

# Keys one OpenStream asks for at most (grainmgr.proto: OpenStreamRequest.count).
MAX_KEYS_PER_ASK = 64
# A spare key is used only this long after it came (grainmgr's keys live 30 s).
SPARE_KEY_SECONDS = 20.0

StreamT = TypeVar("StreamT")


@dataclasses.dataclass(slots=True)
class _Spare:
    """A stream key of a batch, not used yet."""

    session: str  # the grainmgr session it opens a stream of
    address: str
    secret: str
    deadline: float  # monotonic


class GrainStreams:
    def __init__(
        self,
        grainmgr: grainmgr_pb2_grpc.GrainManagerStub,
        base_path: Callable[[Origin], str],
    ) -> None:
        self.grainmgr = grainmgr
        self._base_path = base_path  # where the grain's app is served, for OpenSession
        self._pool: dict[str, list[Upstream]] = {}
        # Stream keys of a batch not used yet, per origin; the ask under way per origin and how
        # many requests want a key for it now (see _ticket).
        self._spares: dict[str, list[_Spare]] = {}
        self._asking: dict[str, asyncio.Future[None]] = {}
        self._wanting: dict[str, int] = {}

    async def take_stream(self, origin: Origin, decision: Decision) -> tuple[Upstream, bool]:
        """A stream for one HTTP exchange: a pooled one if any, else a new one (True if pooled)."""
        self._check_session_role(origin, decision)
        pool = self._pool.get(origin.origin_id)
        while pool:
            stream = pool.pop()
            if stream.usable():
                return stream, True
            stream.close()
        return await self.new_stream(origin, decision, upstream_connect), False

    def give_back(self, origin: Origin, stream: Upstream, ok: bool) -> None:
        """After an exchange: pool `stream` if `ok` and its origin has room, else close it."""
        pool = self._pool.setdefault(origin.origin_id, [])
        if ok and len(pool) < POOL_PER_ORIGIN:
            stream.idle_since = time.monotonic()
            pool.append(stream)
        else:
            stream.close()

    async def open_websocket_stream(self, origin: Origin, decision: Decision) -> RelayStream:
        """A fresh stream for one WebSocket (never from or back to the pool)."""
        self._check_session_role(origin, decision)
        return await self.new_stream(origin, decision, relay_connect)

    def _check_session_role(self, origin: Origin, decision: Decision) -> None:
        if origin.grainmgr_session and tuple(decision.permissions) != origin.session_permissions:
            # The role changed (narrowed or widened): a new grainmgr session carries it.
            origin.grainmgr_session = ""
            self._spares.pop(origin.origin_id, None)
            for stale in self._pool.pop(origin.origin_id, []):
                stale.close()

    async def new_stream(
        self,
        origin: Origin,
        decision: Decision,
        connect: Callable[[grainmgr_pb2.StreamTicket], Awaitable[StreamT]],
    ) -> StreamT:
        """A new stream through the origin's grainmgr session (opened first if it has none)."""
        ticket, spare = await self._ticket(origin, decision)
        if not spare:
            return await connect(ticket)
        try:
            return await connect(ticket)
        except ConnectionError:
            # A spare key the relay refused (its session ended meanwhile): no more spares of
            # this origin, and one more try with a key asked for now.
            self._spares.pop(origin.origin_id, None)
            ticket, _ = await self._ticket(origin, decision)
            return await connect(ticket)

    async def _ticket(
        self, origin: Origin, decision: Decision
    ) -> tuple[grainmgr_pb2.StreamTicket, bool]:
        """A stream key for `origin` (True if it is a spare from an earlier batch).

        One call to grainmgr per origin at a time: requests that find no spare key while one
        is under way wait for it, then take a spare or ask for as many keys as are wanted
        by then. A burst of N new connections costs one OpenSession (if the origin has no
        session) and one or two OpenStream calls, not N of each."""
        oid = origin.origin_id
        self._wanting[oid] = self._wanting.get(oid, 0) + 1
        try:
            while True:
                spare = self._take_spare(origin)
                if spare is not None:
                    return spare, True
                asking = self._asking.get(oid)
                if asking is None:
                    break
                # Shielded: a waiter cancelled (its client left) must not cancel the ask.
                await asyncio.shield(asking)
            done = asyncio.get_running_loop().create_future()
            self._asking[oid] = done
            try:
                ticket = await self._ask(origin, decision, self._wanting[oid])
            except (Denied, ConnectionError) as exc:
                # Those waiting for this ask fail with it (a grain that cannot start answers
                # them all at once, as grainmgr's one start attempt would have).
                done.set_exception(exc)
                done.exception()  # retrieved: no "never retrieved" log without waiters
                raise
            finally:
                del self._asking[oid]
                if not done.done():  # asked, or cancelled (its client left): others ask anew
                    done.set_result(None)
            return ticket, False
        finally:
            self._wanting[oid] -= 1
            if not self._wanting[oid]:
                del self._wanting[oid]

    async def _ask(
        self, origin: Origin, decision: Decision, wanted: int
    ) -> grainmgr_pb2.StreamTicket:
        """Keys from grainmgr: `wanted` of them (the first returned, the rest kept as spares)
        from the origin's session, or the first stream of a new session."""
        if origin.grainmgr_session:
            session = origin.grainmgr_session
            try:
                ticket: grainmgr_pb2.StreamTicket = await self.grainmgr.OpenStream(
                    grainmgr_pb2.OpenStreamRequest(
                        grain_id=origin.grain_id,
                        session_id=session,
                        count=min(wanted, MAX_KEYS_PER_ASK),
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    raise ConnectionError("grainmgr refused a stream") from exc
                origin.grainmgr_session = ""
            else:
                if ticket.more_stream_key_secrets:
                    deadline = time.monotonic() + SPARE_KEY_SECONDS
                    self._spares.setdefault(origin.origin_id, []).extend(
                        _Spare(session, ticket.relay_address, secret, deadline)
                        for secret in ticket.more_stream_key_secrets
                    )
                return ticket
        try:
            opened: grainmgr_pb2.OpenSessionResponse = await self.grainmgr.OpenSession(
                grainmgr_pb2.OpenSessionRequest(
                    grain_id=origin.grain_id,
                    identity=cast(common_pb2.AppIdentity, decision.identity),
                    permissions=decision.permissions,
                    session_type=grainmgr_pb2.SESSION_TYPE_API
                    if origin.session_type == "api"
                    else grainmgr_pb2.SESSION_TYPE_NORMAL,
                    tab_id=origin.tab_id,
                    base_path=self._base_path(origin),
                    acting_account_id=getattr(decision.identity, "user_id", ""),
                    user_agent=origin.user_agent,
                ),
                timeout=90,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Denied(409, "this grain cannot start: " + (exc.details() or "")) from exc
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Denied(404, "no such grain") from exc
            raise ConnectionError("grainmgr could not open a session") from exc
        origin.grainmgr_session = opened.session_id
        origin.session_permissions = tuple(decision.permissions)
        return opened.stream

    def _take_spare(self, origin: Origin) -> grainmgr_pb2.StreamTicket | None:
        """A spare key of the origin's current session, still well inside its life."""
        spares = self._spares.get(origin.origin_id)
        now = time.monotonic()
        while spares:
            spare = spares.pop()
            if spare.session == origin.grainmgr_session and spare.deadline > now:
                return grainmgr_pb2.StreamTicket(
                    relay_address=spare.address, stream_key_secret=spare.secret
                )
        self._spares.pop(origin.origin_id, None)
        return None

    def sweep(self) -> None:
        """Close pooled streams idle for POOL_IDLE_SECONDS, so idle grains can stop."""
        limit = time.monotonic() - POOL_IDLE_SECONDS
        for origin_id, pool in list(self._pool.items()):
            keep = [s for s in pool if s.idle_since > limit]
            for stale in pool:
                if stale.idle_since <= limit:
                    stale.close()
            if keep:
                pool[:] = keep
            else:
                del self._pool[origin_id]
        now = time.monotonic()
        for origin_id, spares in list(self._spares.items()):
            spares[:] = [spare for spare in spares if spare.deadline > now]
            if not spares:
                del self._spares[origin_id]

    def close(self) -> None:
        """Close every pooled stream (the frontend is stopping)."""
        for pool in self._pool.values():
            for stream in pool:
                stream.close()
        self._pool.clear()
        self._spares.clear()
