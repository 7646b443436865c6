"""The frontend's HTTP/1.1 client on a relay stream (grain_upstream.py), against a real socket.

A small asyncio server plays grainmgr's relay (the handshake) and then the grain, answering
each request head with scripted bytes: good framings must come through whole and leave the
stream reusable only when it really is; malformed ones must raise UpstreamError (the proxy's
502) and never be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from grainhouse_frontend import grain_relay, grain_upstream
from grainhouse_frontend.grain_upstream import StreamClosed, Upstream, UpstreamError

pytestmark = pytest.mark.unit
KEY = "k3y"
GET = b"GET / HTTP/1.1\r\nhost: g\r\n\r\n"


@pytest.fixture(autouse=True)
def relayed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake relay here speaks the relayed handshake on its Unix socket: no hand-off (which
    tests/unit/grainmgr/test_relay_handoff.py tests against grainmgr's real relay)."""
    monkeypatch.setattr(grain_relay, "HAND_OFF", False)


# What the fake grain does with each request: (request head, reader, writer) -> None.
Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], object]


@contextlib.asynccontextmanager
async def relay(tmp_path: Path, *answers: bytes | Script) -> AsyncIterator[str]:
    """A relay on a unix socket: checks the key, then answers request i with answers[i]
    (bytes, then the stream stays open; or a script). Yields the relay address."""
    path = tmp_path / "relay.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line != f"GRAINHOUSE-RELAY/1 {KEY}\r\n".encode():
                writer.write(b"NO\r\n")
                return
            writer.write(b"OK\r\n")
            for answer in answers:
                head = await reader.readuntil(b"\r\n\r\n")
                if isinstance(answer, bytes):
                    writer.write(answer)
                    await writer.drain()
                else:
                    result = answer(head, reader, writer)
                    if asyncio.iscoroutine(result):
                        await result
            await reader.read()  # hold the stream open until the client closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path)
    try:
        yield f"unix:{path}"
    finally:
        server.close()
        await server.wait_closed()


async def body_of(stream: Upstream) -> bytes:
    out = b""
    while True:
        data, done = await stream.read_body()
        out += data
        if done:
            return out


async def exchange(stream: Upstream, head: bytes = GET, head_request: bool = False) -> tuple:
    await stream.write(head)
    response = await stream.read_head(head_request)
    return response.status, dict(response.headers), await body_of(stream)


async def test_content_length_bodies_come_whole_and_the_stream_is_reused(tmp_path: Path) -> None:
    one = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    two = b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\nX-Odd:  spaced \r\n\r\nbye"
    async with relay(tmp_path, one, two) as address:
        stream = await grain_relay.connect(address, KEY)
        status, headers, body = await exchange(stream)
        assert (status, body) == (200, b"hello")
        assert headers[b"content-type"] == b"text/plain"  # names lowercased, values as sent
        assert stream.usable()
        status, headers, body = await exchange(stream)
        assert (status, body, headers[b"x-odd"]) == (201, b"bye", b"spaced")
        assert stream.usable()
        stream.close()


async def test_chunked_body_with_extensions_and_trailers(tmp_path: Path) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with relay(tmp_path, answer, answer) as address:
        stream = await grain_relay.connect(address, KEY)
        assert (await exchange(stream))[2] == b"hello, world"
        assert stream.usable()
        assert (await exchange(stream))[2] == b"hello, world"
        stream.close()


async def test_chunked_body_arriving_in_pieces(tmp_path: Path) -> None:
    parts = [
        b"HTTP/1.1 200 OK\r\nTransfer-",
        b"Encoding: chunked\r\n\r\n",
        b"a\r",
        b"\n0123",
        b"456789\r\n",
        b"0\r\n",
        b"\r\n",
    ]

    async def dribble(head: bytes, reader: object, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)

    async with relay(tmp_path, dribble) as address:
        stream = await grain_relay.connect(address, KEY)
        assert (await exchange(stream))[2] == b"0123456789"
        assert stream.usable()
        stream.close()


async def test_body_until_close_ends_the_stream(tmp_path: Path) -> None:
    async def until_close(head: bytes, reader: object, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with relay(tmp_path, until_close) as address:
        stream = await grain_relay.connect(address, KEY)
        assert (await exchange(stream))[2] == b"all of it"
        assert not stream.usable()
        stream.close()


async def test_head_204_304_and_informational_answers_have_no_body(tmp_path: Path) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",  # answers a HEAD: no body follows
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n"
        b"Content-Length: 2\r\n\r\nok",
    ]
    async with relay(tmp_path, *answers) as address:
        stream = await grain_relay.connect(address, KEY)
        head = b"HEAD / HTTP/1.1\r\nhost: g\r\n\r\n"
        assert await exchange(stream, head, head_request=True) == (
            200,
            {b"content-length": b"999"},
            b"",
        )
        assert (await exchange(stream))[::2] == (204, b"")
        assert (await exchange(stream))[::2] == (304, b"")
        assert (await exchange(stream))[::2] == (200, b"ok")
        assert stream.usable()
        stream.close()


async def test_connection_close_or_http10_or_extra_bytes_are_not_reused(tmp_path: Path) -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n",  # unsolicited
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n",  # both framings: chunked wins, the stream ends
    ):
        async with relay(tmp_path, answer) as address:
            stream = await grain_relay.connect(address, KEY)
            assert (await exchange(stream))[2] == b"x"
            assert not stream.usable(), answer
            stream.close()


MALFORMED = {
    "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
    "no status code": b"HTTP/1.1 OK\r\n\r\n",
    "short status": b"HTTP/1.1 20 OK\r\n\r\n",
    "bad version": b"HTTP/2.0 200 OK\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "NUL": b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
    "control character": b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "bare CR": b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
    "status above 599": b"HTTP/1.1 700 Odd\r\nContent-Length: 0\r\n\r\n",
    "folded header": b"HTTP/1.1 200 OK\r\nX: a\r\n  b\r\nContent-Length: 0\r\n\r\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    "conflicting lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    "signed chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nhi\r\n",
    "chunk without CRLF": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX",
    "huge chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"f" * 40
    + b"\r\n",
    "overlong chunk line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 5000,
    "oversized head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (grain_upstream.MAX_HEAD + 10),
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_responses_raise_and_the_stream_is_not_reused(
    tmp_path: Path, name: str
) -> None:
    async with relay(tmp_path, MALFORMED[name]) as address:
        stream = await grain_relay.connect(address, KEY)
        with pytest.raises(UpstreamError):
            await exchange(stream)
        assert not stream.usable()
        stream.close()


EARLY_CLOSE = {
    "before any byte": b"",
    "inside the head": b"HTTP/1.1 200 OK\r\nContent-Le",
    "inside a length body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "inside a chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
}


@pytest.mark.parametrize("name", sorted(EARLY_CLOSE))
async def test_a_stream_closed_early_raises(tmp_path: Path, name: str) -> None:
    async def cut(head: bytes, reader: object, writer: asyncio.StreamWriter) -> None:
        writer.write(EARLY_CLOSE[name])
        await writer.drain()
        writer.close()

    async with relay(tmp_path, cut) as address:
        stream = await grain_relay.connect(address, KEY)
        with pytest.raises(UpstreamError) as raised:
            await exchange(stream)
        # Only a stream that ended before any answer may be retried by the proxy.
        assert isinstance(raised.value, StreamClosed) == (name == "before any byte")
        stream.close()


async def test_request_bodies_stream_to_the_grain(tmp_path: Path) -> None:
    got: list[bytes] = []

    async def echo(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(head)
        got.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with relay(tmp_path, echo) as address:
        stream = await grain_relay.connect(address, KEY)
        await stream.write(b"POST / HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n")
        await stream.write(b"3\r\nabc\r\n")
        await stream.write(b"0\r\n\r\n")
        response = await stream.read_head(False)
        assert (response.status, await body_of(stream)) == (200, b"ok")
        assert got[1] == b"3\r\nabc\r\n0\r\n\r\n"
        stream.close()


async def test_a_refused_key_fails_the_connect(tmp_path: Path) -> None:
    async with relay(tmp_path) as address:
        with pytest.raises(ConnectionError):
            await grain_relay.connect(address, "wrong")


async def test_a_silent_grain_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grain_upstream, "READ_TIMEOUT", 0.2)

    async def silent(head: bytes, reader: asyncio.StreamReader, writer: object) -> None:
        await reader.read()

    async with relay(tmp_path, silent) as address:
        stream = await grain_relay.connect(address, KEY)
        with pytest.raises(TimeoutError):
            await exchange(stream)
        stream.close()


async def test_a_body_faster_than_its_reader_is_not_buffered_whole(tmp_path: Path) -> None:
    size = 8 * 1024 * 1024

    async def flood(head: bytes, reader: object, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async with relay(tmp_path, flood) as address:
        stream = await grain_relay.connect(address, KEY)
        await stream.write(GET)
        await stream.read_head(False)
        got, most = 0, 0
        while True:
            await asyncio.sleep(0.01)  # a slow client: the grain writes faster than this reads
            most = max(most, len(stream._buf))
            data, done = await stream.read_body()
            got += len(data)
            if done:
                break
        assert got == size
        # Reading stops past the high-water mark (plus what one socket read can bring).
        assert most < grain_upstream.BUFFER_HIGH + 512 * 1024
        stream.close()
