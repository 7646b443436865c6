"""The relay's hand-off: on its Unix socket, a stream's socket itself goes to the client (the
frontend's real client, grain_upstream.hand_off), held by a lease; never over TCP.

The "app" here is one end of a socket pair the test holds: what matters is who holds the
socket and when it is cut, not what is behind it (the integration tests run real grains).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from grainhouse_frontend import grain_relay, grain_upstream
from grainhouse_grainmgr.relay import Relay
from grainhouse_grainmgr.sessions import StreamKeys
from grainhouse_proto import grainmgr_pb2


class FakeGrain:
    """A connector whose streams end at sockets the test reads and writes."""

    def __init__(self) -> None:
        self.peers: list[socket.socket] = []
        self.done = 0
        self.asked = 0

    async def connect(self, grain_id: str, session_id: str) -> tuple[socket.socket, object, object]:
        self.asked += 1
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        peer.setblocking(False)
        self.peers.append(peer)

        def finished() -> None:
            self.done += 1

        return ours, lambda: None, finished


@pytest.fixture()
async def relay(tmp_path: Path) -> AsyncIterator[tuple[Relay, FakeGrain, str]]:
    grain = FakeGrain()
    relay = Relay(StreamKeys(), grain.connect)
    path = str(tmp_path / "relay.sock")
    await relay.start("127.0.0.1:0", path)
    try:
        yield relay, grain, path
    finally:
        await relay.close()
        for peer in grain.peers:
            peer.close()


def relayed(direction: str) -> float:
    value = REGISTRY.get_sample_value(
        "grainhouse_grainmgr_relay_bytes_total", {"direction": direction}
    )
    return value or 0.0


async def until(check: object, seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_handed_off_stream_lives_as_long_as_its_lease(
    relay: tuple[Relay, FakeGrain, str],
) -> None:
    r, grain, path = relay
    loop = asyncio.get_running_loop()
    before_in, before_out = relayed("in"), relayed("out")
    stream = await grain_relay.hand_off(path, r.keys.issue("g", "s").secret)
    (peer,) = grain.peers
    await stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await loop.sock_recv(peer, 100) == b"GET / HTTP/1.1\r\n\r\n"
    await loop.sock_sendall(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await stream.read_head(False)
    assert response.status == 200
    assert await stream.read_body() == (b"ok", True)
    assert stream.usable() and grain.done == 0  # the stream is held: grainmgr counts it open
    stream.close()  # ends the lease: grainmgr's reference goes and the "app" sees the end
    await until(lambda: grain.done == 1)
    assert await asyncio.wait_for(loop.sock_recv(peer, 100), 10) == b""
    # The bytes the client reported on its lease reach relay_bytes.
    await until(lambda: relayed("in") - before_in == 18)
    assert relayed("out") - before_out == len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def test_grainmgr_cutting_the_stream_reaches_the_holder(
    relay: tuple[Relay, FakeGrain, str],
) -> None:
    r, grain, path = relay
    stream = await grain_relay.hand_off(path, r.keys.issue("g", "s").secret)
    # What a grain stop does to the stream's task (and grainmgr's shutdown to all of them).
    await r.close()
    await until(lambda: grain.done == 1)
    with pytest.raises(grain_upstream.StreamClosed):
        await stream.read_head(False)
    stream.close()


async def test_no_hand_off_over_tcp_nor_with_a_dead_key(
    relay: tuple[Relay, FakeGrain, str],
) -> None:
    r, grain, path = relay
    host, port = r.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GRAINHOUSE-HANDOFF/1 {r.keys.issue('g', 's').secret}\r\n".encode())
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing handed
    writer.close()
    with pytest.raises(ConnectionError, match="refused"):
        await grain_relay.hand_off(path, "A" * 43)
    assert grain.asked == 0


async def test_a_websocket_stream_is_handed_off_and_reports_its_bytes(
    relay: tuple[Relay, FakeGrain, str],
) -> None:
    """grain_websocket's stream: the app's socket itself on a Unix relay (no byte through
    grainmgr), its lease ended by close with the bytes it carried; relayed over TCP."""
    r, grain, path = relay
    loop = asyncio.get_running_loop()
    before_in, before_out = relayed("in"), relayed("out")
    ticket = grainmgr_pb2.StreamTicket(
        relay_address=f"unix:{path}", stream_key_secret=r.keys.issue("g", "s").secret
    )
    stream = await grain_relay.relay_connect(ticket)
    (peer,) = grain.peers
    assert stream.lease is not None
    # The socket the stream writes on is the grain's end itself: its peer is the test's.
    assert stream.writer.get_extra_info("socket").getpeername() == peer.getsockname()
    await stream.write(b"ping")
    assert await loop.sock_recv(peer, 100) == b"ping"
    await loop.sock_sendall(peer, b"pong!")
    assert await asyncio.wait_for(stream.read(100), 10) == b"pong!"
    assert grain.done == 0
    stream.close()
    await until(lambda: grain.done == 1)
    await until(lambda: relayed("in") - before_in == 4)
    assert relayed("out") - before_out == 5
    assert await asyncio.wait_for(loop.sock_recv(peer, 100), 10) == b""

    # Over TCP the same call gets a relayed stream: no lease, bytes copied by the relay.
    tcp = grainmgr_pb2.StreamTicket(
        relay_address=r.address, stream_key_secret=r.keys.issue("g", "s").secret
    )
    relayed_stream = await grain_relay.relay_connect(tcp)
    assert relayed_stream.lease is None
    await relayed_stream.write(b"hi")
    assert await asyncio.wait_for(loop.sock_recv(grain.peers[1], 100), 10) == b"hi"
    relayed_stream.close()
    assert await asyncio.wait_for(loop.sock_recv(grain.peers[1], 100), 10) == b""
