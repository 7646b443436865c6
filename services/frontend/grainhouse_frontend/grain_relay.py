"""How the frontend reaches a grain's stream: grainmgr's relay, or the app's socket handed off.

Owns: the client side of grainmgr's relay protocol (grainmgr.proto, StreamTicket): the relayed
handshake over TCP or a Unix socket, and the hand-off on a Unix socket (the app's socket
received with SCM_RIGHTS, its lease given to the Upstream that uses it); the WebSocket
variant of a relayed stream (RelayStream).
Trusts: grainmgr's relay for the socket it hands over (checked to be a socket, nothing more:
what is behind it is the grain's, as on a relayed stream); the ticket's address.
Never: keeps an fd it did not turn into a stream (every failure closes what came); waits for
the relay without a deadline; hands off over anything but a Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat

from grainhouse_frontend.grain_upstream import LEASE_REPORT, Upstream
from grainhouse_proto import grainmgr_pb2

HANDSHAKE_TIMEOUT = 30.0

# grainmgr's relay handshake (grainmgr.proto, StreamTicket): this line out, RELAY_OK back.
RELAY_OK = b"OK\r\n"
# Its hand-off variant (Unix sockets only): RELAY_OK comes with the app's socket attached, and
# the connection stays open as the stream's lease (grain_upstream.Upstream holds it).
# Streams of a relay on this machine (`unix:` address) are handed off, not relayed.
HAND_OFF = True


def relay_hello(stream_key_secret: str) -> bytes:
    return f"GRAINHOUSE-RELAY/1 {stream_key_secret}\r\n".encode()


def relay_endpoint(address: str) -> tuple[str | None, str, int]:
    """(unix path, or None; host; port) of a StreamTicket.relay_address."""
    if address.startswith("unix:"):
        return address[5:], "", 0
    host, port = address.rsplit(":", 1)
    return None, host, int(port)


def handoff_hello(stream_key_secret: str) -> bytes:
    return f"GRAINHOUSE-HANDOFF/1 {stream_key_secret}\r\n".encode()


async def take_socket(path: str, stream_key_secret: str) -> tuple[socket.socket, socket.socket]:
    """The hand-off itself: (lease, the app's socket, non-blocking) for a stream key, from the
    relay's Unix socket at `path`. Every failure closes whatever came."""
    loop = asyncio.get_running_loop()
    lease = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lease.setblocking(False)
    got: list[int] = []
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await loop.sock_connect(lease, path)
            await loop.sock_sendall(lease, handoff_hello(stream_key_secret))
            answer = await _receive_fd(loop, lease, got)
        if answer != RELAY_OK or len(got) != 1 or not stat.S_ISSOCK(os.fstat(got[0]).st_mode):
            raise ConnectionError("the relay refused the stream key")
        sock = socket.socket(fileno=got.pop())
    except BaseException:
        for fd in got:
            os.close(fd)
        lease.close()
        raise
    sock.setblocking(False)
    return lease, sock


async def hand_off(path: str, stream_key_secret: str) -> Upstream:
    """A stream grainmgr hands over (a relay on this machine): the app's socket itself, so
    no byte of it passes through grainmgr (one process and two socket hops less per request).

    The Unix connection it came on is the stream's lease: closing it (Upstream.close, or this
    process ending) ends the stream for grainmgr; grainmgr ending it (grain stopped, session
    ended) cuts the stream here too."""
    loop = asyncio.get_running_loop()
    lease, sock = await take_socket(path, stream_key_secret)
    try:
        _, stream = await loop.create_connection(Upstream, sock=sock)
    except BaseException:
        sock.close()
        lease.close()
        raise
    stream.adopt(lease, sock if sock.family in (socket.AF_INET, socket.AF_INET6) else None)
    return stream


async def _receive_fd(
    loop: asyncio.AbstractEventLoop, lease: socket.socket, fds: list[int]
) -> bytes:
    """The relay's answer on `lease`, the fds that came with it appended to `fds`."""
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data, got, _, _ = socket.recv_fds(lease, 16, 4)
        except BlockingIOError:
            return
        except OSError as exc:
            if not done.done():
                done.set_exception(exc)
            return
        fds.extend(got)
        if not done.done():
            done.set_result(data)

    loop.add_reader(lease.fileno(), readable)
    try:
        return await done
    finally:
        loop.remove_reader(lease.fileno())


async def connect(address: str, stream_key_secret: str) -> Upstream:
    """Open one stream of grainmgr's relay (`unix:/path` or `host:port`): handed off when the
    relay is on this machine, else relayed after its handshake."""
    loop = asyncio.get_running_loop()
    path, host, port = relay_endpoint(address)
    if path is not None and HAND_OFF:
        return await hand_off(path, stream_key_secret)
    if path is not None:
        opening = loop.create_unix_connection(Upstream, path)
    else:
        opening = loop.create_connection(Upstream, host, port)
    _, stream = await asyncio.wait_for(opening, HANDSHAKE_TIMEOUT)
    try:
        await stream.write(relay_hello(stream_key_secret))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            if not await stream.take_answer(RELAY_OK):
                raise ConnectionError("the relay refused the stream key")
    except BaseException:
        stream.close()
        raise
    return stream


class RelayStream:
    """One stream for a WebSocket (never pooled: after the upgrade it is the socket), read and
    written through `read` and `write`, which count its bytes. A handed-off one (a relay on
    this machine) holds its lease, like a handed-off Upstream: closing the stream reports
    the bytes and ends the lease; grainmgr ending the lease cuts the socket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lease: socket.socket | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.lease = lease
        self.sent = 0
        self.received = 0

    async def read(self, limit: int) -> bytes:
        data = await self.reader.read(limit)
        self.received += len(data)
        return data

    async def write(self, data: bytes) -> None:
        self.sent += len(data)
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        lease, self.lease = self.lease, None
        if lease is not None:
            with contextlib.suppress(OSError):
                lease.send(LEASE_REPORT.pack(self.sent, self.received))
            lease.close()


async def relay_connect(ticket: grainmgr_pb2.StreamTicket) -> RelayStream:
    """Open one stream for a WebSocket: handed off when the relay is on this machine (see
    `hand_off`), else with grainmgr's relay handshake; a StreamReader/StreamWriter pair."""
    path, host, port = relay_endpoint(ticket.relay_address)
    if path is not None and HAND_OFF:
        lease, sock = await take_socket(path, ticket.stream_key_secret)
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            lease.close()
            raise
        return RelayStream(reader, writer, lease)
    if path is not None:
        opening = asyncio.open_unix_connection(path)
    else:
        opening = asyncio.open_connection(host, port)
    reader, writer = await asyncio.wait_for(opening, HANDSHAKE_TIMEOUT)
    writer.write(relay_hello(ticket.stream_key_secret))
    await writer.drain()
    answer = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
    if answer != RELAY_OK:
        writer.close()
        raise ConnectionError("the relay refused the stream key")
    return RelayStream(reader, writer)


async def upstream_connect(ticket: grainmgr_pb2.StreamTicket) -> Upstream:
    """One stream for HTTP/1.1 exchanges (pooled): handed off or relayed, see `connect`."""
    return await connect(ticket.relay_address, ticket.stream_key_secret)
