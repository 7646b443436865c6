"""splice.py: the Protocol pair both byte relays (grainmgr's relay, the grain's bridge) use."""

from __future__ import annotations

import asyncio
import socket

import pytest

from grainhouse_grainmgr import splice

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def pair() -> tuple[socket.socket, socket.socket]:
    """(the splice's end, the outside world's end), both non-blocking."""
    inner, outer = socket.socketpair()
    inner.setblocking(False)
    outer.setblocking(False)
    return inner, outer


async def read_until_eof(sock: socket.socket, into: bytearray | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    got = into if into is not None else bytearray()
    while chunk := await loop.sock_recv(sock, 65536):
        got += chunk
    return bytes(got)


async def started(
    sockets: list[socket.socket], before: bytes = b"", **kw: object
) -> tuple[splice.Splice, ...]:
    a_in, a_out = pair()
    b_in, b_out = pair()
    sockets += [a_out, b_out]
    if before:  # waiting (then EOF) before the splice exists: read as soon as `a` is wrapped
        a_out.sendall(before)
        a_out.shutdown(socket.SHUT_WR)
    counts = {"a": 0, "b": 0}

    def seen_a(n: int) -> None:
        counts["a"] += n

    def seen_b(n: int) -> None:
        counts["b"] += n

    s = splice.Splice(seen_a, seen_b, **kw)  # type: ignore[arg-type]
    await s.start(a_in, b_in, to_a=b"OK\r\n", to_b=b"early:")
    return s, a_out, b_out, counts  # type: ignore[return-value]


async def test_both_directions_copied_with_first_bytes_counted_and_half_closes() -> None:
    made: list[socket.socket] = []
    s, a_out, b_out, counts = await started(made)
    loop = asyncio.get_running_loop()
    up = bytes(range(256)) * (4 * MIB // 256)
    down = bytes(reversed(range(256))) * (3 * MIB // 256)
    at_b = asyncio.create_task(read_until_eof(b_out))
    at_a = asyncio.create_task(read_until_eof(a_out))
    await loop.sock_sendall(a_out, up)
    a_out.shutdown(socket.SHUT_WR)  # a is done sending: b must see EOF ...
    assert await asyncio.wait_for(at_b, 60) == b"early:" + up
    assert not s.done.done()  # ... while b -> a still flows
    await loop.sock_sendall(b_out, down)
    b_out.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(at_a, 60) == b"OK\r\n" + down
    await asyncio.wait_for(s.wait(), 10)  # both sides sent EOF: the splice is over
    assert counts == {"a": len(up), "b": len(down)}  # what was read, not our own bytes
    assert s.a.transport.is_closing() and s.b.transport.is_closing()
    for sock in made:
        sock.close()


async def test_a_reader_that_stops_stops_the_writer_instead_of_buffering() -> None:
    made: list[socket.socket] = []
    limit = 64 * 1024
    s, a_out, b_out, _ = await started(made, write_limit=limit)
    for sock in (a_out, b_out):  # small kernel buffers: the splice's own buffer shows sooner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    block = b"x" * MIB
    sent = 0
    most = 0
    # Nobody reads b_out: a_out must fill up (EAGAIN), the splice's buffer stay bounded.
    stalled = 0
    while stalled < 20:
        try:
            n = a_out.send(block)
        except BlockingIOError:
            stalled += 1
            await asyncio.sleep(0.01)
        else:
            sent += n
        most = max(most, s.buffered())
        await asyncio.sleep(0)
    assert sent > 0
    # One read (asyncio reads up to 256 KiB at a time) may land on top of the limit.
    assert most <= limit + 256 * 1024, most
    assert not s.a.transport.is_reading()  # a is paused: backpressure reached the sender
    # Once b is read again, everything arrives and a resumes.
    a_out.shutdown(socket.SHUT_WR)
    got = await asyncio.wait_for(read_until_eof(b_out), 60)
    assert got == b"early:" + b"x" * sent
    b_out.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_until_eof(a_out), 10) == b"OK\r\n"
    await asyncio.wait_for(s.wait(), 10)
    for sock in made:
        sock.close()


async def test_cancelling_the_waiter_drops_both_sides() -> None:
    made: list[socket.socket] = []
    s, a_out, b_out, _ = await started(made)
    waiter = asyncio.create_task(s.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    got_a = await asyncio.wait_for(read_until_eof(a_out), 10)
    got_b = await asyncio.wait_for(read_until_eof(b_out), 10)
    assert (got_a, got_b) == (b"OK\r\n", b"early:")
    await asyncio.wait_for(asyncio.shield(s.done), 10)
    for sock in made:
        sock.close()


async def test_one_side_closing_closes_the_other_after_its_bytes() -> None:
    made: list[socket.socket] = []
    s, a_out, b_out, _ = await started(made)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(a_out, b"last words")
    a_out.close()  # gone entirely, no half-close: b gets what was sent, then EOF
    made.remove(a_out)
    assert await asyncio.wait_for(read_until_eof(b_out), 10) == b"early:last words"
    # b writing into the dead side ends the splice (an error on a, then b dropped).
    with pytest.raises(OSError):
        for _ in range(100):
            await loop.sock_sendall(b_out, b"y" * 65536)
            await asyncio.sleep(0.01)
    await asyncio.wait_for(s.wait(), 10)
    for sock in made:
        sock.close()


async def test_bytes_and_eof_that_came_first_wait_for_the_other_side() -> None:
    made: list[socket.socket] = []
    s, a_out, b_out, counts = await started(made, before=b"already here")
    assert await asyncio.wait_for(read_until_eof(b_out), 10) == b"early:already here"
    b_out.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(read_until_eof(a_out), 10) == b"OK\r\n"
    await asyncio.wait_for(s.wait(), 10)
    assert counts == {"a": len(b"already here"), "b": 0}
    for sock in made:
        sock.close()
