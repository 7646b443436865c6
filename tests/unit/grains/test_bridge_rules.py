"""The bridge's own rules (bridge.py runs in the grain; its pure parts are tested here)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from grainhouse_grainmgr import bridge

pytestmark = pytest.mark.unit


def _grain() -> bridge.Grain:
    app = bridge.App({"argv": ["/bin/true"], "env": {}, "port": 1})
    grain = bridge.Grain(app, {"permissions": [], "roles": []})
    grain.sessions["s1"] = {"params": {}, "streams": set()}
    return grain


def test_stream_keys_need_a_live_session_and_32_bytes() -> None:
    grain = _grain()
    with pytest.raises(ValueError):
        grain.prepare("nope", b"k" * 32)
    with pytest.raises(ValueError):
        grain.prepare("s1", b"short")
    grain.prepare("s1", b"k" * 32)
    assert b"k" * 32 in grain.keys


async def test_unknown_or_used_keys_close_the_socket() -> None:
    grain = _grain()
    grain.prepare("s1", b"k" * 32)
    grain.close_session("s1")  # ending a session forgets its keys
    a, b = socket.socketpair()
    grain.accept(b"k" * 32, a)
    assert a.fileno() == -1  # closed at once
    b.close()


def test_stream_limit_is_enforced(monkeypatch: Any) -> None:
    grain = _grain()
    monkeypatch.setattr(bridge, "MAX_PREPARED_KEYS", 2)
    grain.prepare("s1", b"a" * 32)
    grain.prepare("s1", b"b" * 32)
    with pytest.raises(OverflowError):
        grain.prepare("s1", b"c" * 32)


async def test_streams_reach_the_app_half_close_and_end_with_their_session() -> None:
    """A stream handed in on fd 4 is spliced to the app's TCP port (bridge.splice); EOF
    passes through both ways; closing the session drops its live streams at once."""
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
    outs = []
    for key in (b"a" * 32, b"b" * 32):
        grain.prepare("s1", key)
        ours, out = socket.socketpair()
        out.setblocking(False)
        grain.accept(key, ours)
        outs.append(out)
    first, second = outs
    body = bytes(range(256)) * 4096  # 1 MiB
    await loop.sock_sendall(first, body)
    first.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(first, 65536), 30):
        got += chunk
    assert bytes(got) == b"got %d" % len(body)  # the app saw our EOF and answered, then EOF
    for _ in range(100):  # both sides sent EOF: that stream is over, the other one lives
        if len(grain.streams) == 1:
            break
        await asyncio.sleep(0.01)
    assert len(grain.streams) == 1
    grain.close_session("s1")  # the second stream never sent EOF: the app still waits
    assert await asyncio.wait_for(loop.sock_recv(second, 10), 10) == b""
    for _ in range(100):
        if not grain.streams:
            break
        await asyncio.sleep(0.01)
    assert not grain.streams
    for s in outs:
        s.close()
    server.close()
    await server.wait_closed()
