"""A grain that sends hostile things on its stream hand-over socket (fd 4) gets nothing.

grainmgr asks a grain's bridge for a stream (Bridge.openStream) and takes the connected app
socket the bridge sends back on fd 4 (control.BridgeClient). Here the bridge is a small fake
one (a real Cap'n Proto server on a real socket pair, in this process, as a compromised
bridge could be): it answers with a regular file, two sockets, a wrong key, a listening or a
UDP socket, too many fds, nothing at all, or a flood of unsolicited datagrams. Each stream is
refused, grainmgr's other grain keeps getting its streams, and no fd is left behind.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import capnp
import pytest

from grainhouse_common.errors import GrainhouseError
from grainhouse_grainmgr import control
from grainhouse_grainmgr.control import BridgeClient, GrainEnds

from .conftest import refusing_backend

pytestmark = pytest.mark.integration


async def open_fds() -> int:
    """This process's open fds, once the echo app closed its side of our last stream."""
    await asyncio.sleep(0.1)
    return len(os.listdir("/proc/self/fd"))


def send(channel: socket.socket, key: bytes, fds: list[int]) -> None:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    channel.sendmsg([key], rights)


class FakeBridge:
    """A bridge whose openStream does what `mode` says (the sockets it sends are its own
    copies, closed right after sending, as the real bridge does)."""

    def __init__(self, ends: GrainEnds, app_port: int) -> None:
        self.ends = ends
        self.app_port = app_port
        self.mode = "good"
        self.server: Any = None

    async def start(self) -> BridgeClient:
        fake = self
        schema = control.schema()

        class Bridge(schema.Bridge.Server):  # type: ignore[misc, name-defined]
            async def openStream(self, sessionId: str, streamKey: bytes, **_: Any) -> None:
                await fake.answer(bytes(streamKey))

        stream = await capnp.AsyncIoStream.create_unix_connection(sock=self.ends.control_theirs)
        self.server = capnp.TwoPartyServer(stream, bootstrap=Bridge())
        client = BridgeClient(self.ends, f"fake-{self.app_port}-{id(self)}")
        await client.connect(refusing_backend())
        return client

    async def app_socket(self) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.app_port))
        return sock

    async def answer(self, key: bytes) -> None:
        channel = self.ends.streams_theirs
        mode = self.mode
        opened: list[Any] = []
        try:
            if mode == "good":
                opened.append(await self.app_socket())
                send(channel, key, [opened[0].fileno()])
            elif mode == "file":
                opened.append(open("/proc/self/status", "rb"))  # noqa: SIM115 - closed below
                send(channel, key, [opened[0].fileno()])
            elif mode == "two":
                opened += [await self.app_socket(), await self.app_socket()]
                send(channel, key, [s.fileno() for s in opened])
            elif mode == "many":  # more than grainmgr has room for: MSG_CTRUNC
                opened += [await self.app_socket() for _ in range(control.FDS_ROOM + 3)]
                send(channel, key, [s.fileno() for s in opened])
            elif mode == "wrong-key":
                opened.append(await self.app_socket())
                send(channel, os.urandom(32), [opened[0].fileno()])
            elif mode == "long-key":
                opened.append(await self.app_socket())
                send(channel, key + b"x", [opened[0].fileno()])
            elif mode == "no-fd":
                send(channel, key, [])
            elif mode == "listening":
                opened.append(socket.create_server(("127.0.0.1", 0)))
                send(channel, key, [opened[0].fileno()])
            elif mode == "udp":
                opened.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                send(channel, key, [opened[0].fileno()])
            elif mode == "silent":
                pass  # answers, sends nothing: grainmgr's wait times out
            elif mode.startswith("flood"):  # unsolicited datagrams, each with a socket
                opened.append(await self.app_socket())
                channel.setblocking(False)
                for _ in range(int(mode.split(":")[1])):
                    try:
                        send(channel, os.urandom(32), [opened[0].fileno()])
                    except BlockingIOError:
                        await asyncio.sleep(0.001)
                opened.append(await self.app_socket())
                send(channel, key, [opened[1].fileno()])
        finally:
            for thing in opened:
                thing.close()


@pytest.fixture
async def app_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echoes(client: BridgeClient) -> bool:
    sock = await client.open_stream("s1")
    loop = asyncio.get_running_loop()
    try:
        assert sock.type == socket.SOCK_STREAM and not sock.getblocking()
        await loop.sock_sendall(sock, b"ping")
        return await asyncio.wait_for(loop.sock_recv(sock, 64), 10) == b"echo:ping"
    finally:
        sock.close()


HOSTILE = ["file", "two", "many", "wrong-key", "long-key", "no-fd", "listening", "udp", "silent"]


async def test_hostile_answers_on_fd4_open_nothing_and_leak_nothing(
    app_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "STREAM_OPEN_SECONDS", 1.0)
    async with capnp.kj_loop():
        good_ends, bad_ends = GrainEnds.make(), GrainEnds.make()
        good, bad = FakeBridge(good_ends, app_port), FakeBridge(bad_ends, app_port)
        good_client, bad_client = await good.start(), await bad.start()
        try:
            assert await echoes(good_client)
            assert await echoes(bad_client)  # the fake bridge is a working one until told
            before = await open_fds()
            for mode in HOSTILE:
                bad.mode = mode
                with pytest.raises(GrainhouseError):
                    await bad_client.open_stream("s1")
                assert await open_fds() == before, mode
                assert await echoes(good_client), mode  # the other grain is served meanwhile
            assert bad_client.bad_datagrams == len(HOSTILE) - 1  # `silent` sent nothing
            bad.mode = "good"  # below the bad-datagram limit the grain keeps its streams
            assert await echoes(bad_client)
            assert await open_fds() == before
        finally:
            good_client.close()
            bad_client.close()


async def test_a_flood_of_unsolicited_datagrams_is_read_in_batches_then_cut_off(
    app_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with capnp.kj_loop():
        good_ends, bad_ends = GrainEnds.make(), GrainEnds.make()
        good, bad = FakeBridge(good_ends, app_port), FakeBridge(bad_ends, app_port)
        good_client, bad_client = await good.start(), await bad.start()
        before = await open_fds()
        try:
            bad.mode = f"flood:{control.MAX_BAD_DATAGRAMS * 4}"
            flood = asyncio.ensure_future(bad_client.open_stream("s1"))
            for _ in range(5):  # the loop keeps serving while the flood is read
                assert await echoes(good_client)
            with pytest.raises(GrainhouseError):
                await flood  # its own stream came after the cut-off: never read
            assert bad_client.bad_datagrams == control.MAX_BAD_DATAGRAMS
            # The operator learns which grain it was.
            assert any(
                bad_client.grain_id in r.getMessage() and "refused" in r.getMessage()
                for r in caplog.records
            )
            bad.mode = "good"
            with pytest.raises(GrainhouseError):  # fd 4 is not read any more: refused at once
                await bad_client.open_stream("s1")
            assert await echoes(good_client)
        finally:
            bad_client.close()  # what the grain queued on fd 4 goes with the socket
        assert await open_fds() == before - 4  # the bad grain's four channel ends, nothing more
        good_client.close()


async def test_pending_stream_requests_are_bounded(
    app_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_PENDING_STREAMS", 3)
    monkeypatch.setattr(control, "STREAM_OPEN_SECONDS", 2.0)
    async with capnp.kj_loop():
        ends = GrainEnds.make()
        fake = FakeBridge(ends, app_port)
        client = await fake.start()
        try:
            fake.mode = "silent"
            waiting = [asyncio.ensure_future(client.open_stream("s1")) for _ in range(3)]
            await asyncio.sleep(0.1)
            with pytest.raises(GrainhouseError, match="new streams"):
                await client.open_stream("s1")
            for w in waiting:
                with pytest.raises(GrainhouseError, match="in time"):
                    await w
            fake.mode = "good"
            assert await echoes(client)  # the waiting ones timed out and made room
        finally:
            client.close()
