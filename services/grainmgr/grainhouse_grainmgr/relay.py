"""The byte-stream relay: the frontend's connections spliced to a grain's app, unparsed.

Owns: the relay's listening socket and every relayed connection (a splice.Splice each, with
bounded write buffers, so a 1 GiB body costs no more memory than a 1 KiB one).
Trusts: grains.py to turn a claimed key into a socket connected to the grain's bridge;
splice.py to move the bytes (and half-closes) once the handshake is done.
Never: parses HTTP; answers an unknown, used or expired key (it just closes); reads more than
the handshake line before the key is accepted.

Protocol (grainmgr.proto, StreamTicket): the client sends "GRAINHOUSE-RELAY/1 <key>\r\n", the
relay answers "OK\r\n", then both directions are the app's bytes until either side closes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr import metrics
from grainhouse_grainmgr.sessions import StreamKeys
from grainhouse_grainmgr.splice import Splice

PREFIX = b"GRAINHOUSE-RELAY/1 "
MAX_HANDSHAKE = 256
HANDSHAKE_SECONDS = 10.0

# (grain_id, session_id, our end of a fresh socket pair) -> hands the other end to the grain
# and returns a callback to call on every relayed chunk (activity) and one when done.
Connector = Callable[
    [str, str, socket.socket], Awaitable[tuple[Callable[[], None], Callable[[], None]]]
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
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._meters: set[Meter] = set()
        self._counting: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self, listen: str) -> str:
        host, _, port = listen.rpartition(":")
        sock = socket.create_server((host, int(port)), backlog=512, reuse_port=False)
        sock.setblocking(False)
        self._sock = sock
        self.address = f"{host}:{sock.getsockname()[1]}"
        self._accepting = asyncio.create_task(self._accept_loop())
        self._counting = asyncio.create_task(self._count_loop())
        return self.address

    async def _count_loop(self) -> None:
        while True:
            await asyncio.sleep(COUNT_EVERY_SECONDS)
            for meter in self._meters:
                meter.flush()

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self._sock)
            except OSError:
                await asyncio.sleep(0.05)  # EMFILE and friends: do not spin
                continue
            task = asyncio.create_task(self._serve(client))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _handshake(self, client: socket.socket) -> tuple[str, bytes] | None:
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
        if not line.startswith(PREFIX):
            return None
        return line[len(PREFIX) :].decode("ascii", "replace").strip(), rest

    async def _serve(self, client: socket.socket) -> None:
        client.setblocking(False)
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
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.setblocking(False)
            try:
                touch, done = await self.connect(claim[0], claim[1], theirs)
            except GrainhouseError:
                metrics.relay_refused.labels(reason="grain").inc()
                return
            finally:
                theirs.close()
            metrics.relay_streams.inc()
            meter = Meter(touch)
            self._meters.add(meter)
            try:
                splice = Splice(meter.seen_in, meter.seen_out)
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

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._counting is not None:
            self._counting.cancel()
        if self._sock is not None:
            self._sock.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
