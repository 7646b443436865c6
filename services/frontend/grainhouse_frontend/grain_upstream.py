"""HTTP/1.1 to a grain over one relay stream: a request out, the grain's response read back.

Owns: one relay stream into a grain (its socket, read buffer, write flow control, the relay
handshake; for a relay on this machine, the app's socket handed off by grainmgr and the lease
that keeps it) and the client side of HTTP/1.1 on it: request body framing (Content-Length as sent,
or chunked), parsing the response (status line, headers, a Content-Length, chunked or
until-close body, informational 1xx answers skipped) and whether the stream may carry another
request.
Trusts: nothing the grain sends — a malformed, oversized or cut-short response raises
UpstreamError (the proxy answers 502 and drops the stream); its caller for the request head
(grain_proxy.py builds it from headers the ASGI server already checked for CR, LF and NUL).
Never: decides which headers cross into or out of a grain (grain_proxy.py does); lets a stream
be reused unless its response was read to its exact end with nothing after it; waits for the
grain without a deadline.

Why not h11 (used before): it cost ~15% of the frontend's CPU per proxied request (events,
state machine, header re-validation) and ran on StreamReader/StreamWriter. Why a hand-written
parser rather than httptools: llhttp through httptools cannot be told that a response answers a
HEAD request (it then waits for a body that never comes), and only the response side is parsed
here — a status line, `name: value` lines and three body framings (RFC 9112 §4-§7), checked
strictly and bounded in size.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time
from typing import cast

# How long the grain may stay silent while a response is awaited (per read, not per response).
READ_TIMEOUT = 300.0
MAX_HEAD = 64 * 1024  # status line + headers of one response
MAX_HEADERS = 200
# Read flow control: past this many buffered bytes the socket is not read until the proxy
# asks for more (a grain streaming to a slow client must not fill the frontend's memory).
BUFFER_HIGH = 256 * 1024
MAX_CHUNK_LINE = 4096  # a chunk size line with its extensions, or one trailer line
# Framing of a response body (RFC 9112 §6.3).
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3
# Chunked decoding states.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = 0, 1, 2, 3, 4
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# Control characters other than HTAB, CR and LF (those two are checked by count): never in a
# head the ASGI server would write on (it refuses them too, with a 500 instead of our 502).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UpstreamError(ConnectionError):
    """The grain's side broke HTTP/1.1 or ended the stream early: answer 502, drop the stream."""


class StreamClosed(UpstreamError):
    """The stream ended before the grain sent a byte of its answer (a pooled stream the
    grain's side closed meanwhile: a request without a body may be sent again on a new one)."""


class Response:
    """A response head: status and headers (names lowercased, values as sent)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


class Upstream(asyncio.Protocol):
    """One relay stream, used for one HTTP/1.1 exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # A stream grainmgr handed off (see hand_off): its lease, and the socket to ask
        # TCP_QUICKACK on after every read (the app's TCP socket, when it is one).
        self.lease: socket.socket | None = None
        self.quickack: socket.socket | None = None
        self.sent = 0
        self.received = 0
        self.idle_since = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._eof = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._reading_paused = False
        self._drained: asyncio.Future[None] | None = None
        # The response being read.
        self._framing = NO_BODY
        self._left = 0  # LENGTH: bytes still due; CHUNKED: bytes left in this chunk
        self._chunk_state = _SIZE
        self._trailer_bytes = 0
        self._keep_alive = False
        self._reusable = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.quickack is not None:
            # As grainmgr's splice did (splice.py says why): an app writing a response in
            # pieces without TCP_NODELAY waits for our ACK between them.
            try:
                self.quickack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                self.quickack = None
        self.received += len(data)
        self._buf += data
        if len(self._buf) > BUFFER_HIGH and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too: a relay stream is never half-open on purpose

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._closed = True
        self._end_lease()
        self._wake()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(UpstreamError("the relay stream closed"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- the stream -------------------------------------------------------------------------

    def adopt(self, lease: socket.socket, quickack: socket.socket | None) -> None:
        """A handed-off stream, ready: its lease (closed with the stream) and, for a TCP
        socket, the socket to ask TCP_QUICKACK on after every read."""
        self.lease = lease
        self.quickack = quickack
        self._reusable = True

    async def take_answer(self, expected: bytes) -> bool:
        """The relay's one-line answer to the handshake: True (and the stream ready) if it is
        `expected`; no deadline here (the caller sets one)."""
        while b"\r\n" not in self._buf and not self._eof and len(self._buf) < 64:
            await self._more()
        if not self._buf.startswith(expected):
            return False
        del self._buf[: len(expected)]
        self._reusable = True
        return True

    def usable(self) -> bool:
        """Whether this idle stream can carry a request (open, nothing unsolicited waiting)."""
        return not self._eof and not self._buf and self._reusable

    def close(self) -> None:
        self._reusable = False
        if self.transport is not None:
            self.transport.close()
        self._end_lease()

    def _end_lease(self) -> None:
        """A handed-off stream is done: report its bytes and close the lease (grainmgr then
        drops its reference to the app's socket too)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            with contextlib.suppress(OSError):
                lease.send(LEASE_REPORT.pack(self.sent, self.received))
            lease.close()

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise StreamClosed("the relay stream closed")
        assert self.transport is not None
        self.transport.write(data)
        self.sent += len(data)
        if self._paused:
            self._drained = self._loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes (or the end of the stream), at most READ_TIMEOUT."""
        if self._reading_paused:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        waiter = self._loop.create_future()
        self._waiter = waiter
        # One timer per wait, no task or context manager: this is the hot path.
        timer = self._loop.call_later(READ_TIMEOUT, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    # -- the exchange -----------------------------------------------------------------------

    async def read_head(self, head_request: bool) -> Response:
        """The response's head (informational 1xx answers skipped); sets up its body framing."""
        self._reusable = False
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buf) >= MAX_HEAD + 4:
                    raise UpstreamError("the grain's response head is too large")
                if self._eof:
                    if not buf:
                        raise StreamClosed("the grain closed the stream before answering")
                    raise UpstreamError("the grain closed the stream inside a response head")
                await self._more()
                continue
            head = bytes(buf[:end])
            del buf[: end + 4]
            status, headers, http11 = _parse_head(head)
            if status >= 200:
                break
            if status == 101:
                raise UpstreamError("the grain switched protocols on a plain request")
        self._frame(status, headers, http11, head_request)
        return Response(status, headers)

    def _frame(
        self, status: int, headers: list[tuple[bytes, bytes]], http11: bool, head_request: bool
    ) -> None:
        te: list[bytes] = []
        lengths: list[bytes] = []
        keep_alive = http11
        for name, value in headers:
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                te.append(value)
            elif name == b"connection" and b"close" in [
                t.strip() for t in value.lower().split(b",")
            ]:
                keep_alive = False
        self._keep_alive = keep_alive
        if head_request or status in (204, 304):
            self._framing = NO_BODY
        elif te:
            codings = [t.strip() for t in b",".join(te).lower().split(b",")]
            if codings[-1] == b"chunked":
                self._framing, self._chunk_state, self._trailer_bytes = CHUNKED, _SIZE, 0
            else:
                self._framing = UNTIL_CLOSE
            if lengths:
                # Both framings at once (RFC 9112 §6.3 (3)): chunked wins, the stream ends here.
                self._keep_alive = False
        elif lengths:
            values = {v.strip() for joined in lengths for v in joined.split(b",")}
            if len(values) != 1:
                raise UpstreamError("the grain sent conflicting Content-Length values")
            (value,) = values
            if not value.isdigit() or len(value) > 18:
                raise UpstreamError("the grain sent a bad Content-Length")
            self._left = int(value)
            self._framing = LENGTH if self._left else NO_BODY
        else:
            self._framing = UNTIL_CLOSE

    async def read_body(self, wait: bool = True) -> tuple[bytes, bool]:
        """The next piece of the body (all that is buffered) and whether the body has ended.

        With `wait=False`, only what is buffered already is looked at ((b"", False) if that
        is nothing): the proxy checks the bytes that came with the head before answering, so a
        body broken from its start still gets a 502."""
        while True:
            framing = self._framing
            if framing == NO_BODY:
                return b"", self._finish()
            if framing == LENGTH:
                buf = self._buf
                if buf:
                    left = self._left
                    if len(buf) <= left:
                        data = bytes(buf)
                        buf.clear()
                    else:
                        data = bytes(buf[:left])
                        del buf[:left]
                    self._left = left = left - len(data)
                    return data, (self._finish() if left == 0 else False)
                if self._eof:
                    raise UpstreamError("the grain closed the stream inside a body")
            elif framing == CHUNKED:
                data, done = self._dechunk()
                if data or done:
                    return data, (self._finish() if done else False)
                if self._eof:
                    raise UpstreamError("the grain closed the stream inside a chunked body")
            else:  # UNTIL_CLOSE
                if self._buf:
                    data = bytes(self._buf)
                    self._buf.clear()
                    return data, False
                if self._eof:
                    self._keep_alive = False
                    self._framing = NO_BODY
                    continue
            if not wait:
                return b"", False
            await self._more()

    def _finish(self) -> bool:
        self._framing = NO_BODY
        # Anything after the response is unsolicited: such a stream is not trusted again.
        self._reusable = self._keep_alive and not self._eof and not self._buf
        return True

    def _dechunk(self) -> tuple[bytes, bool]:
        """Decode what the buffer holds of a chunked body: (data, whether the body ended)."""
        buf = self._buf
        out: list[bytes] = []
        while True:
            state = self._chunk_state
            if state == _DATA:
                if not buf:
                    break
                take = min(self._left, len(buf))
                out.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if self._left == 0:
                    self._chunk_state = _DATA_END
            elif state == _DATA_END:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise UpstreamError("the grain's chunk does not end with CRLF")
                del buf[:2]
                self._chunk_state = _SIZE
            else:
                end = buf.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
                if end < 0:
                    if len(buf) >= MAX_CHUNK_LINE + 2:
                        raise UpstreamError("the grain sent an overlong chunk line")
                    break
                line = bytes(buf[:end])
                del buf[: end + 2]
                if state == _SIZE:
                    size = line.split(b";", 1)[0].rstrip(b" \t")
                    if not _HEX.fullmatch(size) or b"\n" in line or b"\r" in line:
                        raise UpstreamError("the grain sent a bad chunk size")
                    self._left = int(size, 16)
                    self._chunk_state = _DATA if self._left else _TRAILER
                else:  # _TRAILER: trailers are read and dropped (hop-by-hop here)
                    if not line:
                        self._chunk_state = _DONE
                        return b"".join(out), True
                    self._trailer_bytes += len(line) + 2
                    if self._trailer_bytes > MAX_HEAD or not _HEADER_LINE.fullmatch(line):
                        raise UpstreamError("the grain sent bad trailers")
        return b"".join(out), False


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]], bool]:
    """(status, headers with lowercased names, whether HTTP/1.1) of a response head."""
    if (
        head.count(b"\n") != head.count(b"\r\n")
        or head.count(b"\r") != head.count(b"\r\n")
        or _CONTROL.search(head) is not None
    ):
        raise UpstreamError("the grain sent a response head with stray control characters")
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if (
        len(status_line) < 12
        or status_line[:7] != b"HTTP/1."
        or status_line[7:9] not in (b"1 ", b"0 ")
        or not status_line[9:12].isdigit()
        or (len(status_line) > 12 and status_line[12:13] != b" ")
    ):
        raise UpstreamError("the grain sent a bad status line")
    status = int(status_line[9:12])
    if not 100 <= status <= 599:
        raise UpstreamError("the grain sent a bad status code")
    if len(lines) > MAX_HEADERS + 1:
        raise UpstreamError("the grain sent too many headers")
    headers = []
    match = _HEADER_LINE.fullmatch
    for line in lines[1:]:
        found = match(line)
        if found is None:
            # Includes obsolete line folding (a line starting with a space): refused.
            raise UpstreamError("the grain sent a bad header line")
        headers.append((found.group(1).lower(), found.group(2)))
    return status, headers, status_line[7:8] == b"1"


# What a handed-off stream's holder sends on its lease before closing it (grainmgr.proto,
# StreamTicket): the bytes it sent to and received from the app.
LEASE_REPORT = struct.Struct("!QQ")
