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


async def test_pump_copies_everything_and_half_closes() -> None:
    left_out, left_in = socket.socketpair()
    right_in, right_out = socket.socketpair()
    for s in (left_in, right_in):
        s.setblocking(False)
    data = bytes(range(256)) * 4096  # 1 MiB
    task = asyncio.create_task(bridge.pump(left_in, right_in))
    loop = asyncio.get_running_loop()
    right_out.setblocking(False)

    async def read_all() -> bytes:
        got = bytearray()
        while chunk := await loop.sock_recv(right_out, 65536):
            got += chunk
        return bytes(got)

    reader = asyncio.create_task(read_all())
    await loop.run_in_executor(None, left_out.sendall, data)
    left_out.shutdown(socket.SHUT_WR)
    got = await asyncio.wait_for(reader, 60)
    await task
    assert bytes(got) == data
    for s in (left_out, left_in, right_in, right_out):
        s.close()
