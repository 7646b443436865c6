"""The bridge's own rules (bridge.py runs in the grain; its pure parts are tested here)."""

from __future__ import annotations

import array
import asyncio
import socket
from typing import Any

import pytest

from grainhouse_grainmgr import bridge

pytestmark = pytest.mark.unit


def _grain() -> bridge.Grain:
    app = bridge.App({"argv": ["/bin/true"], "env": {}, "port": 1})
    grain = bridge.Grain(app, {"permissions": [], "roles": []})
    grain.sessions["s1"] = {"params": {}, "streams": 0}
    return grain


def test_stream_keys_need_a_live_session_and_32_bytes() -> None:
    grain = _grain()
    with pytest.raises(ValueError):
        grain.prepare("nope", b"k" * 32)
    with pytest.raises(ValueError):
        grain.prepare("s1", b"short")
    grain.prepare("s1", b"k" * 32)
    assert b"k" * 32 in grain.keys


async def test_unknown_or_used_keys_open_nothing() -> None:
    grain = _grain()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grain.channel = ours
    grain.prepare("s1", b"k" * 32)
    grain.close_session("s1")  # ending a session forgets its keys
    with pytest.raises(ValueError):
        await grain.hand_over(b"k" * 32)
    with pytest.raises(ValueError):
        await grain.hand_over(b"never prepared, never prepared!")
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(64)  # nothing was sent
    ours.close()
    theirs.close()


def test_stream_limit_is_enforced(monkeypatch: Any) -> None:
    grain = _grain()
    monkeypatch.setattr(bridge, "MAX_PREPARED_KEYS", 2)
    grain.prepare("s1", b"a" * 32)
    grain.prepare("s1", b"b" * 32)
    with pytest.raises(OverflowError):
        grain.prepare("s1", b"c" * 32)


def _take(channel: socket.socket) -> tuple[bytes, socket.socket]:
    """One datagram of fd 4 as grainmgr reads it: the key and the one socket attached."""
    data, ancdata, _flags, _ = channel.recvmsg(64, socket.CMSG_SPACE(4 * 4))
    fds = [fd for _l, _k, payload in ancdata for fd in array.array("i", payload)]
    assert len(fds) == 1
    return data, socket.socket(fileno=fds[0])


async def test_streams_are_app_connections_handed_over_with_their_key() -> None:
    """hand_over connects to the app's TCP port and sends that socket on fd 4 under the key;
    the bridge keeps no copy: closing ours is the app's EOF. Bytes never pass the bridge."""
    loop = asyncio.get_running_loop()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until our EOF arrives
        writer.write(b"got " + str(len(data)).encode())
        writer.write_eof()
        writer.close()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    grain = _grain()
    grain.app.port = port
    grain.app.listening = True
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grain.channel = ours
    grain.prepare("s1", b"a" * 32)
    await grain.hand_over(b"a" * 32)
    assert b"a" * 32 not in grain.keys  # used up
    assert grain.handed == 1 and grain.sessions["s1"]["streams"] == 1
    key, stream = _take(theirs)
    assert key == b"a" * 32
    assert stream.family == socket.AF_INET and stream.getpeername()[1] == port
    stream.setblocking(False)
    body = bytes(range(256)) * 4096  # 1 MiB
    await loop.sock_sendall(stream, body)
    stream.shutdown(socket.SHUT_WR)  # our EOF reaches the app: nobody else holds the socket
    got = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(stream, 65536), 30):
        got += chunk
    assert bytes(got) == b"got %d" % len(body)
    for s in (stream, ours, theirs):
        s.close()
    server.close()
    await server.wait_closed()


async def test_a_stream_of_an_app_that_is_not_listening_fails() -> None:
    grain = _grain()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    grain.app.port = probe.getsockname()[1]  # bound, never listening: connect is refused
    grain.app.listening = True
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    grain.channel = ours
    grain.prepare("s1", b"b" * 32)
    with pytest.raises(OSError):
        await grain.hand_over(b"b" * 32)
    assert not grain.keys and grain.opening == 0 and grain.handed == 0
    for s in (probe, ours, theirs):
        s.close()
