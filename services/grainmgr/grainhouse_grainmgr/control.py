"""grainmgr's end of a grain's control channels: Cap'n Proto on fd 3, stream hand-over on fd 4.

Owns: the two socket pairs made for one grain start, the two-party RPC client on the first
and the SEQPACKET hand-over socket on the second; the loaded grain.capnp schema.
Trusts: nothing the bridge answers: every reply is bounded (traversal limit, caps on view
info) and a malformed one ends the connection, which grains.py treats as a crash.
Never: blocks the event loop; sends anything on fd 4 but a stream key with one fd.

Must run inside `capnp.kj_loop()` (grainmgr's __main__ arranges it).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import socket
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

    def __init__(self, ends: GrainEnds) -> None:
        self.ends = ends
        self._client: Any = None
        self._bridge: Any = None
        self.disconnected: asyncio.Future[Any] | None = None

    async def connect(self) -> None:
        stream = await capnp.AsyncIoStream.create_unix_connection(sock=self.ends.control_ours)
        self._client = capnp.TwoPartyClient(stream, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS)
        self._bridge = self._client.bootstrap().cast_as(schema().Bridge)
        self.disconnected = asyncio.ensure_future(self._client.on_disconnect())

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

    async def open_stream(self, session_id: str, key: bytes, sock: socket.socket) -> None:
        """Prepare the stream on the bridge, then hand it our socket's peer."""
        try:
            await self._bridge.openStream(session_id, key)
        except capnp.KjException as exc:
            raise GrainhouseError(Kind.UNAVAILABLE, "the grain refused a stream") from exc
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
        for _ in range(200):
            try:
                self.ends.streams_ours.sendmsg([key], rights)
                return
            except BlockingIOError:
                # A grain that never reads fd 4 fills it; we wait a little, then give up.
                await asyncio.sleep(0.01)
            except OSError as exc:
                raise GrainhouseError(Kind.UNAVAILABLE, "the grain is gone") from exc
        raise GrainhouseError(Kind.OVERLOADED, "the grain does not take new streams")

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
        self.ends.close()
