"""The byte-stream relay: the frontend's connections spliced to a grain's app, unparsed.

Owns: the relay's listening sockets (TCP, and the Unix socket of `relay_socket` when set: its
path, which it replaces at start and removes at close) and every relayed connection (a
splice.Splice each, with bounded write buffers, so a 1 GiB body costs no more memory than a
1 KiB one).
Trusts: grains.py to turn a claimed key into a socket connected to the grain's app (the
grain's bridge connects it and hands it over on fd 4; control.py checks it is a stream socket
and nothing else); splice.py to move the bytes (and half-closes) once the handshake is done.
Never: parses HTTP; answers an unknown, used or expired key (it just closes); reads more than
the handshake line before the key is accepted.

Protocol (grainmgr.proto, StreamTicket): the client sends "GRAINHOUSE-RELAY/1 <key>\r\n", the
relay answers "OK\r\n", then both directions are the app's bytes until either side closes.
On the Unix socket a client may instead send "GRAINHOUSE-HANDOFF/1 <key>\r\n": the answer
"OK\r\n" then carries the app's socket itself (SCM_RIGHTS) and the connection stays open as the
stream's lease (see `_hand_off`): no byte of that stream passes through grainmgr.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr import metrics
from grainhouse_grainmgr.sessions import StreamKeys
from grainhouse_grainmgr.splice import Splice

PREFIX = b"GRAINHOUSE-RELAY/1 "
HANDOFF_PREFIX = b"GRAINHOUSE-HANDOFF/1 "
# What a handed-off stream's holder may send on its lease before closing it: the bytes it
# sent to and received from the app (two unsigned 64-bit big-endian counts), for relay_bytes.
LEASE_REPORT = struct.Struct("!QQ")
MAX_HANDSHAKE = 256
HANDSHAKE_SECONDS = 10.0

# (grain_id, session_id) -> a socket connected to the grain's app (ours to close), a callback
# to call on every relayed chunk (activity) and one when the stream is done.
Connector = Callable[
    [str, str], Awaitable[tuple[socket.socket, Callable[[], None], Callable[[], None]]]
]


# Relayed bytes reach the metric in batches, at most this long after they passed.
COUNT_EVERY_SECONDS = 1.0


class Meter:
    """One stream's relayed bytes not yet added to `relay_bytes`. Counter.inc takes a lock:
    per chunk it was about a tenth of the relay's Python time (py-spy, warm requests), so
    chunks are only summed here."""

    __slots__ = ("inbound", "outbound", "seen_in", "seen_out")

    def __init__(self, touch: Callable[[], None]) -> None:
        self.inbound = 0
        self.outbound = 0

        # What runs on every relayed chunk (splice.Splice's seen_a / seen_b): keep it cheap.
        def seen_in(n: int) -> None:
            self.inbound += n
            touch()

        def seen_out(n: int) -> None:
            self.outbound += n
            touch()

        self.seen_in = seen_in
        self.seen_out = seen_out

    def flush(self) -> None:
        if self.inbound:
            n, self.inbound = self.inbound, 0
            metrics.relay_bytes.labels(direction="in").inc(n)
        if self.outbound:
            n, self.outbound = self.outbound, 0
            metrics.relay_bytes.labels(direction="out").inc(n)


class Relay:
    def __init__(self, keys: StreamKeys, connect: Connector) -> None:
        self.keys = keys
        self.connect = connect
        self._socks: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._conns: set[asyncio.Task[None]] = set()
        self._meters: set[Meter] = set()
        self._counting: asyncio.Task[None] | None = None
        self.address = ""
        self.socket_path = ""

    async def start(self, listen: str, socket_path: str = "") -> str:
        """Listen on `listen` (host:port) and, when given, on the Unix socket `socket_path`
        (mode 0600: only this user's processes may connect; a stale socket file there is
        replaced, anything else there is an error). Returns the bound TCP address."""
        host, _, port = listen.rpartition(":")
        sock = socket.create_server((host, int(port)), backlog=512, reuse_port=False)
        sock.setblocking(False)
        self._socks.append(sock)
        self.address = f"{host}:{sock.getsockname()[1]}"
        if socket_path:
            try:
                self._socks.append(_unix_server(socket_path))
            except BaseException:
                sock.close()
                self._socks.clear()
                raise
            self.socket_path = socket_path
        for listening in self._socks:
            self._accepting.append(asyncio.create_task(self._accept_loop(listening)))
        self._counting = asyncio.create_task(self._count_loop())
        return self.address

    async def _count_loop(self) -> None:
        while True:
            await asyncio.sleep(COUNT_EVERY_SECONDS)
            for meter in self._meters:
                meter.flush()

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listening)
            except OSError:
                await asyncio.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            task = asyncio.create_task(self._serve(client))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _handshake(self, client: socket.socket) -> tuple[str, bytes, bool] | None:
        """(key, bytes after the line, whether a hand-off was asked) of a client's first line."""
        loop = asyncio.get_running_loop()
        data = b""
        while b"\r\n" not in data:
            if len(data) > MAX_HANDSHAKE:
                return None
            chunk = await loop.sock_recv(client, MAX_HANDSHAKE)
            if not chunk:
                return None
            data += chunk
        line, rest = data.split(b"\r\n", 1)
        if line.startswith(PREFIX):
            return line[len(PREFIX) :].decode("ascii", "replace").strip(), rest, False
        # A socket can only be handed to a process on this machine: Unix clients only.
        if line.startswith(HANDOFF_PREFIX) and client.family == socket.AF_UNIX and not rest:
            return line[len(HANDOFF_PREFIX) :].decode("ascii", "replace").strip(), rest, True
        return None

    async def _serve(self, client: socket.socket) -> None:
        client.setblocking(False)
        if client.family != socket.AF_UNIX:
            # Bytes are forwarded as they come; Nagle would hold a response's second piece
            # until the frontend's (delayed) ACK: 40 ms per keep-alive request.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ours: socket.socket | None = None
        try:
            try:
                got = await asyncio.wait_for(self._handshake(client), HANDSHAKE_SECONDS)
            except (TimeoutError, OSError):
                got = None
            claim = self.keys.claim(got[0]) if got else None
            if got is None or claim is None:
                metrics.relay_refused.labels(reason="key").inc()
                return
            try:
                ours, touch, done = await self.connect(claim[0], claim[1])
            except GrainhouseError:
                metrics.relay_refused.labels(reason="grain").inc()
                return
            metrics.relay_streams.inc()
            if got[2]:
                try:
                    await self._hand_off(client, ours)
                finally:
                    ours.close()
                    ours = None
                    metrics.relay_streams.dec()
                    done()
                return
            meter = Meter(touch)
            self._meters.add(meter)
            try:
                # TCP_QUICKACK after every read from the app (when it is TCP): see splice.py.
                splice = Splice(meter.seen_in, meter.seen_out, quickack_b=True)
                # The splice owns both sockets from here on (and closes them).
                stream, ours = ours, None
                await splice.start(client, stream, to_a=b"OK\r\n", to_b=got[1])
                await splice.wait()
            finally:
                self._meters.discard(meter)
                meter.flush()
                metrics.relay_streams.dec()
                done()
        except OSError:
            pass
        finally:
            client.close()
            if ours is not None:
                ours.close()

    async def _hand_off(self, client: socket.socket, app: socket.socket) -> None:
        """Give the client the app's socket, then hold the stream open until the client
        closes its lease (this connection).

        grainmgr keeps its own reference to the socket for the stream's life, so that a grain
        stop, a session's end or grainmgr's shutdown (all of which cancel this task) cut the
        stream for the client too (shutdown acts on the socket, whoever else holds it); and
        the lease's end cuts it as well, so a stream never outlives its lease."""
        loop = asyncio.get_running_loop()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [app.fileno()]))]
        try:
            client.sendmsg([b"OK\r\n"], rights)  # 4 bytes on a fresh socket: never blocks
        except OSError:
            return
        report = b""
        try:
            while len(report) <= LEASE_REPORT.size:
                chunk = await loop.sock_recv(client, LEASE_REPORT.size + 1)
                if not chunk:
                    break
                report += chunk
        finally:
            with contextlib.suppress(OSError):
                app.shutdown(socket.SHUT_RDWR)
        if len(report) == LEASE_REPORT.size:
            sent, received = LEASE_REPORT.unpack(report)
            metrics.relay_bytes.labels(direction="in").inc(sent)
            metrics.relay_bytes.labels(direction="out").inc(received)

    async def close(self) -> None:
        for accepting in self._accepting:
            accepting.cancel()
        if self._counting is not None:
            self._counting.cancel()
        for listening in self._socks:
            listening.close()
        if self.socket_path:
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)


def _unix_server(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 (chmod right after bind, before listen: no
    connection is accepted before; the umask is process-wide and other threads run, so it is
    left alone). Put it in a directory only this user can enter (`grainhouse up` uses 0700)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"relay_socket {path} exists and is not a socket")
        os.unlink(path)  # left by a grainmgr that did not close (a crash, SIGKILL)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
