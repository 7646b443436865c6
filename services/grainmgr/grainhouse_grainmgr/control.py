"""grainmgr's end of a grain's control channels: Cap'n Proto on fd 3, stream hand-over on fd 4.

Owns: the two socket pairs made for one grain start, the two-party RPC connection on the
first (grainmgr exports the grain's PlatformBackend on it, the bridge its Bridge) and the
SEQPACKET hand-over socket on the second: its reader, the stream requests waiting for their
socket, and every fd the grain sends until it is checked and handed out (or closed);
the loaded grain.capnp schema.
Trusts: nothing the bridge answers or sends. Every reply is bounded (traversal limit, caps on
view info) and a malformed one ends the connection, which grains.py treats as a crash. Every
fd arriving on fd 4 is hostile until checked: exactly one per datagram, a connected-kind
stream socket (TCP over AF_INET/AF_INET6, or AF_UNIX), not listening, under a key that
grainmgr asked for and still waits for; anything else is closed at once.
Never: blocks the event loop (fd 4 is read in bounded batches); keeps an fd it did not hand
out; writes on fd 4 (only the grain sends on it).

Must run inside `capnp.kj_loop()` (grainmgr's __main__ arranges it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp

from grainhouse_common.errors import GrainhouseError, Kind

# Replies from a grain are small; a hostile one cannot make us walk a huge message.
TRAVERSAL_LIMIT_WORDS = 64 * 1024
MAX_VIEW_PERMISSIONS = 64
MAX_VIEW_ROLES = 32
MAX_TEXT = 1024

# Streams (fd 4): grainmgr asks for one with Bridge.openStream; the bridge connects to its app
# and sends the connected socket back, in one datagram whose bytes are the request's key.
KEY_BYTES = 32
# Open streams of one grain (grains.connect_stream refuses more; the bridge kept this limit
# when it spliced the streams itself).
MAX_OPEN_STREAMS = 256
# Stream requests of one grain waiting for their socket at once (more are refused).
MAX_PENDING_STREAMS = 64
# From openStream to its socket (the bridge may wait for a starting app to listen).
STREAM_OPEN_SECONDS = 10.0
# Datagrams read per wakeup of fd 4: a grain flooding it cannot hold grainmgr's loop.
READ_BATCH = 32
# Room for this many fds per datagram, so that extras arrive (to be closed) rather than be
# cut off; a datagram with more still sets MSG_CTRUNC and is dropped whole.
FDS_ROOM = 8
# A grain whose fd 4 brought this many bad datagrams (no fd, several, not a stream socket,
# unknown or late key) is not read any more: its further streams are refused.
MAX_BAD_DATAGRAMS = 64
_INET_KINDS = (socket.AF_INET, socket.AF_INET6)

log = logging.getLogger("grainhouse.grainmgr.control")

_SCHEMA: Any = None


def schema_path() -> Path:
    """grain.capnp as shipped inside this package (package data, so any install has it).

    The file is a copy of proto/grain.capnp, the schema's home; a unit test
    (tests/unit/deploy/test_schema_package_data.py) keeps the two identical. Its directory
    holds nothing else: it is mounted read-only into every grain.
    """
    return Path(__file__).resolve().parent / "schema" / "grain.capnp"


def schema() -> Any:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = capnp.load(str(schema_path()))
    return _SCHEMA


@dataclass
class GrainEnds:
    """The grain's ends (to pass as fds 3 and 4) and ours, made before spawning."""

    control_ours: socket.socket
    control_theirs: socket.socket
    streams_ours: socket.socket
    streams_theirs: socket.socket

    @classmethod
    def make(cls) -> GrainEnds:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.setblocking(False)
        return cls(a, b, c, d)

    def close_theirs(self) -> None:
        self.control_theirs.close()
        self.streams_theirs.close()

    def close(self) -> None:
        for s in (self.control_ours, self.control_theirs, self.streams_ours, self.streams_theirs):
            s.close()


def _kj_error(exc: Exception, what: str) -> GrainhouseError:
    return GrainhouseError(Kind.UNAVAILABLE, f"the grain did not answer {what}")


class BridgeClient:
    """Calls on one running grain's bridge."""

    def __init__(self, ends: GrainEnds, grain_id: str = "") -> None:
        self.ends = ends
        self.grain_id = grain_id  # for log lines only
        self._client: Any = None
        self._bridge: Any = None
        self.disconnected: asyncio.Future[Any] | None = None
        # Stream requests waiting for their socket, by key.
        self._pending: dict[bytes, asyncio.Future[socket.socket]] = {}
        self._reading = False
        self.bad_datagrams = 0

    async def connect(self, backend: Any) -> None:
        """Open fd 3's RPC connection: both ends export a bootstrap, ours is `backend` (the
        grain's PlatformBackend, grain_platform.make_backend), the bridge's is `Bridge`."""
        stream = await capnp.AsyncIoStream.create_unix_connection(sock=self.ends.control_ours)
        self._client = capnp.TwoPartyServer(
            stream, bootstrap=backend, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS
        )
        self._bridge = self._client.bootstrap().cast_as(schema().Bridge)
        self.disconnected = asyncio.ensure_future(self._client.on_disconnect())
        self.ends.streams_ours.setblocking(False)
        asyncio.get_running_loop().add_reader(self.ends.streams_ours.fileno(), self._receive)
        self._reading = True

    async def ping(self) -> bool:
        try:
            reply = await self._bridge.ping()
        except capnp.KjException as exc:
            raise _kj_error(exc, "ping") from exc
        return bool(reply.health.appListening)

    async def new_session(self, params: dict[str, Any]) -> Any:
        try:
            message = schema().SessionParams.new_message(**params)
            reply = await self._bridge.newSession(message)
        except capnp.KjException as exc:
            raise _kj_error(exc, "newSession") from exc
        return reply.session

    async def open_stream(self, session_id: str) -> socket.socket:
        """One stream of a session: the bridge connects to its app and hands the connected
        socket back on fd 4 under a fresh key. The socket is ours (to close), non-blocking,
        checked by `_receive`. Fails (UNAVAILABLE, OVERLOADED) when the grain refuses, is
        gone, has too many requests waiting, or sends nothing within STREAM_OPEN_SECONDS."""
        if not self._reading:
            raise GrainhouseError(Kind.UNAVAILABLE, "the grain's stream channel is closed")
        if len(self._pending) >= MAX_PENDING_STREAMS:
            raise GrainhouseError(Kind.OVERLOADED, "the grain does not take new streams")
        key = secrets.token_bytes(KEY_BYTES)
        got: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self._pending[key] = got

        async def call() -> socket.socket:
            try:
                await self._bridge.openStream(session_id, key)
            except capnp.KjException as exc:
                raise GrainhouseError(Kind.UNAVAILABLE, "the grain refused a stream") from exc
            # The bridge sends the socket before it answers: it is here or on its way.
            return await asyncio.shield(got)

        handed = False
        try:
            sock = await asyncio.wait_for(call(), STREAM_OPEN_SECONDS)
            handed = True
            return sock
        except TimeoutError as exc:
            raise GrainhouseError(Kind.UNAVAILABLE, "the grain sent no stream in time") from exc
        finally:
            self._pending.pop(key, None)
            if not handed:
                if got.done() and not got.cancelled() and got.exception() is None:
                    got.result().close()  # came just as we gave up: nobody else has it
                else:
                    got.cancel()

    def _receive(self) -> None:
        """fd 4 readable: up to READ_BATCH datagrams, each (key, one fd) or dropped whole."""
        channel = self.ends.streams_ours
        for _ in range(READ_BATCH):
            try:
                data, fds, flags, _ = socket.recv_fds(
                    channel, KEY_BYTES + 1, FDS_ROOM, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._stop_reading("the grain's stream channel failed")
                return
            if not data and not fds and not flags & socket.MSG_CTRUNC:
                self._stop_reading("")  # the grain closed its end (or sent an empty datagram)
                return
            sock = self._take(data, fds, flags)
            if sock is None:
                self.bad_datagrams += 1
                if self.bad_datagrams >= MAX_BAD_DATAGRAMS:
                    self._stop_reading("too many bad datagrams on the grain's stream channel")
                    return

    def _take(self, key: bytes, fds: list[int], flags: int) -> socket.socket | None:
        """The checked socket of one datagram, handed to its waiting request; None when the
        datagram was bad (every fd in it is closed)."""
        waiter = self._pending.get(key) if len(key) == KEY_BYTES else None
        bad = (
            flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC)
            or len(fds) != 1
            or waiter is None
            or waiter.done()
        )
        if bad:
            for fd in fds:
                os.close(fd)
            return None
        sock = _check_fd(fds[0])
        if sock is None:
            return None
        assert waiter is not None
        del self._pending[key]
        waiter.set_result(sock)
        return sock

    def _stop_reading(self, why: str) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.ends.streams_ours.fileno())
            if why:
                log.warning(
                    "grain %s: %s; its streams are refused from now on", self.grain_id or "?", why
                )
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(
                    GrainhouseError(Kind.UNAVAILABLE, "the grain's stream channel is closed")
                )
        self._pending.clear()

    async def view_info(self) -> dict[str, Any]:
        try:
            reply = await self._bridge.getViewInfo()
        except capnp.KjException as exc:
            raise _kj_error(exc, "getViewInfo") from exc
        info = reply.viewInfo
        if len(info.permissions) > MAX_VIEW_PERMISSIONS or len(info.roles) > MAX_VIEW_ROLES:
            raise GrainhouseError(Kind.UNAVAILABLE, "the grain's view info breaks a cap")
        result: dict[str, Any] = info.to_dict()
        for item in [*result.get("permissions", []), *result.get("roles", [])]:
            for value in item.values():
                if isinstance(value, str) and len(value) > MAX_TEXT:
                    raise GrainhouseError(Kind.UNAVAILABLE, "the grain's view info breaks a cap")
        return result

    async def shutdown(self, grace: int) -> None:
        # The bridge exits right after answering; the answer may never come.
        with contextlib.suppress(capnp.KjException):
            await self._bridge.shutdown(grace)

    def close(self) -> None:
        if self._client is not None:
            # Closing twice, or after the kj loop ended, raises; either way it is closed.
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.disconnected is not None and not self.disconnected.done():
            self.disconnected.cancel()
        self._stop_reading("")  # before the socket closes: the loop must not watch a dead fd
        self.ends.close()


def _check_fd(fd: int) -> socket.socket | None:
    """`fd` as a non-blocking socket if it is a stream socket grainmgr may splice (TCP over
    AF_INET/AF_INET6, or AF_UNIX; not listening), else None (and `fd` closed)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        domain = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        ok = (
            kind == socket.SOCK_STREAM
            and not listening
            and (
                (domain in _INET_KINDS and proto == socket.IPPROTO_TCP)
                or (domain == socket.AF_UNIX and proto == 0)
            )
        )
        if ok:
            sock.setblocking(False)
            if domain in _INET_KINDS:
                # Bytes are forwarded as they come (see relay.py): no Nagle on this side either.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
    except OSError:
        pass
    sock.close()
    return None
