"""Two connected sockets spliced into one byte stream: an asyncio Protocol pair, unparsed.

Owns: the two transports of one splice and the bytes in flight between them (at most
WRITE_LIMIT buffered per direction, plus one read: a 1 GiB body costs what a 1 KiB one does).
Trusts: its caller to hand it two connected, non-blocking stream sockets it may close.
Never: imports anything but the standard library (one small mechanism, no policy); parses or
reorders bytes; buffers past WRITE_LIMIT (a side that does not read stops the other side's
reads instead). Used by grainmgr's relay (the frontend's connection <-> a socket the grain's
bridge connected to the app and handed over on fd 4); the bridge itself relays nothing.

Why Protocols: `loop.sock_recv_into` / `loop.sock_sendall` register and unregister the fd with
the selector on every chunk and wake a task each time. Here both readers stay registered and
`data_received` writes straight into the peer transport (which sends at once when its buffer
is empty), so a relayed request costs one recv and one send per direction.

Lifecycle: EOF on one side is passed on as a half-close (shutdown SHUT_WR) of the other; the
splice ends when both sides have sent EOF, when either side is lost (error or close: the other
is then closed after what is buffered for it is sent), or when `abort()` drops both at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

# Per-direction write buffer limit: above it the side feeding that buffer stops being read
# until it drains to a quarter (asyncio's default low-water mark).
WRITE_LIMIT = 128 * 1024


class _End(asyncio.Protocol):
    """One socket of a splice: what it reads goes to `peer`'s transport."""

    __slots__ = (
        "eof",
        "first",
        "held",
        "lost",
        "peer",
        "quickack",
        "seen",
        "splice",
        "transport",
    )

    def __init__(
        self,
        splice: Splice,
        seen: Callable[[int], None] | None,
        quickack: socket.socket | None,
        first: bytes,
    ) -> None:
        self.splice = splice
        self.seen = seen
        self.quickack = quickack
        self.first = first
        self.held = b""  # read before the other side had a transport
        self.peer: _End | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.peer is not None
        # A socket transport (asyncio's or uvloop's, which does not subclass asyncio's).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.splice.write_limit)
        if self.first:
            transport.write(self.first)  # before anything the other side sends
            self.first = b""
        other = self.peer
        if other.transport is not None:  # we are the second side: let the first one flow
            if other.held:
                transport.write(other.held)
                other.held = b""
            if other.eof:
                transport.write_eof()
            other.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.quickack is not None:
            # An app that writes a response in several small pieces without TCP_NODELAY
            # (http.server does) waits for our ACK between them (Nagle); Linux delays that ACK
            # up to 40 ms unless asked again after every read. Measured (stdlib test app, one
            # keep-alive stream): 23 req/s without this, 1,200-1,800 req/s with it.
            try:
                self.quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self.quickack = None
        out = self.peer.transport  # type: ignore[union-attr]  # wired in start(); hot path: no assert
        if out is not None:
            out.write(data)
        else:
            # The other side is still being wrapped: keep this read (one at most, we stop
            # reading) for its connection_made. Pausing in our own connection_made would not
            # do: Python 3.11's transport adds its reader after that call even when paused.
            self.held += data
            self.transport.pause_reading()  # type: ignore[union-attr]  # set: connection_made came first
        if self.seen is not None:
            self.seen(len(data))

    def eof_received(self) -> bool:
        peer = self.peer
        assert peer is not None
        if peer.transport is None:  # passed on by the other side's connection_made
            self.eof = True
            return True
        if not self.eof:
            self.eof = True
            if not peer.lost:
                peer.transport.write_eof()  # sent once what is buffered for it has gone
        if peer.eof:
            self.splice.close()
            return False
        return True  # keep our transport: the other direction may still be flowing

    def pause_writing(self) -> None:
        # Our transport's buffer passed the limit: stop reading what fills it.
        self.peer.transport.pause_reading()  # type: ignore[union-attr]  # only its reads fill ours

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()  # type: ignore[union-attr]  # paused above: it exists

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.splice._lost(broken=exc is not None)


class Splice:
    """`a` <-> `b` until both sides are done; `done` resolves when both transports are gone.

    `seen_a(n)` is called for every `n` bytes read from `a` (and forwarded to `b`), `seen_b`
    likewise: byte counters and activity stamps, so they must be cheap. `quickack_a` asks
    for TCP_QUICKACK after every read from `a` (a TCP socket to an app), same for `b`.
    """

    def __init__(
        self,
        seen_a: Callable[[int], None] | None = None,
        seen_b: Callable[[int], None] | None = None,
        *,
        quickack_a: bool = False,
        quickack_b: bool = False,
        write_limit: int = WRITE_LIMIT,
    ) -> None:
        self.write_limit = write_limit
        self._seen = (seen_a, seen_b)
        self._quickack = (quickack_a, quickack_b)
        self.a: _End | None = None
        self.b: _End | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(
        self, a: socket.socket, b: socket.socket, to_a: bytes = b"", to_b: bytes = b""
    ) -> None:
        """Wrap both sockets (the splice owns them from now on, even when this fails) and
        start relaying. `to_a` goes to `a` before anything read from `b` (the relay's
        handshake answer), `to_b` to `b` before anything read from `a` (bytes a handshake read
        past its end)."""
        loop = asyncio.get_running_loop()
        ends: list[_End] = []
        for sock, seen, quickack, first in zip(
            (a, b), self._seen, self._quickack, (to_a, to_b), strict=True
        ):
            ends.append(_End(self, seen, sock if quickack and _is_tcp(sock) else None, first))
        end_a, end_b = ends
        end_a.peer, end_b.peer = end_b, end_a
        self.a, self.b = end_a, end_b
        try:
            await loop.connect_accepted_socket(lambda: end_a, a)
        except BaseException:
            a.close()
            b.close()
            self._finish()
            raise
        try:
            await loop.connect_accepted_socket(lambda: end_b, b)
        except BaseException:
            b.close()
            self.abort()
            raise
        if end_a.lost:  # aborted while `b` was being wrapped
            self.abort()

    def close(self) -> None:
        """End gently: each side is closed once what is buffered for it has been sent."""
        for end in (self.a, self.b):
            if end is not None and end.transport is not None:
                end.transport.close()
        self._lost()

    def abort(self) -> None:
        """End now: both sockets closed, buffered bytes dropped."""
        for end in (self.a, self.b):
            if end is not None and end.transport is not None:
                end.transport.abort()
        self._lost()

    def buffered(self) -> int:
        """Bytes waiting in both write buffers (tests, and a look while debugging)."""
        return sum(
            end.transport.get_write_buffer_size()
            for end in (self.a, self.b)
            if end is not None and end.transport is not None
        )

    async def wait(self) -> None:
        """Until the splice is over; cancelling the waiter aborts the splice."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            self.abort()
            raise

    def _lost(self, broken: bool = False) -> None:
        a, b = self.a, self.b
        if a is None or b is None:
            return
        if a.lost and b.lost:
            self._finish()
        elif a.lost or b.lost:
            # One side is gone: nothing more can flow between them. After an error the other
            # side goes at once (what is buffered for it may never drain); otherwise it gets
            # what is buffered for it first.
            for end in (a, b):
                if not end.lost and end.transport is not None:
                    if broken:
                        end.transport.abort()
                    else:
                        end.transport.close()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)
