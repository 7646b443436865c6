"""The public listener's connections: plain grain requests served here, the rest by uvicorn.

Owns: each client connection until its first request that is not a plain grain request (then
the connection, with every byte of that request, goes to uvicorn's own protocol for good):
reading and strictly checking request heads, Content-Length bodies, keep-alive, the response
framing and its single write of head plus body, flow control both ways, the keep-alive timer.
Trusts: app.HostSplit for which host is a grain's; grain_proxy.GrainProxy (through the same
GrainHttpMetrics entry the ASGI path uses) for everything a grain request means: origins,
authorization, header rules, the relay; grain_upstream's parser for the grain's response
heads (no CR, LF or control bytes in a name or value).
Never: decides a grain request differently from the ASGI path (it builds the same scope and
calls the same code); accepts a head it does not fully understand (anything unusual — a
Transfer-Encoding, an Upgrade, an Expect, HTTP/1.0, an absolute or odd target, a duplicate
Host or Content-Length, a header line that is not strictly `token: value` — is handed to
uvicorn untouched, which answers it as before); keeps more than a bounded buffer per
connection.

Why: uvicorn's ASGI machinery (a request cycle per request, message dicts, a send state
machine, a separate write for the head and for the body) cost more than half of the
frontend's CPU per proxied request under bench/bench_grains.py (py-spy); a proxied
hello-world request cost the frontend ~200 µs, more than the app itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("grainhouse.frontend.grain")

# A head longer than this is uvicorn's to refuse (it answers 431 / 400 as before).
MAX_HEAD = 16 * 1024
MAX_HEADERS = 100
# Bytes read ahead of the request being served (a pipelined next request), and of a body not
# yet taken by the relay: past this, the socket is not read until they are consumed.
READ_AHEAD = 256 * 1024
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[!-~]*) HTTP/1\.1")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
# Request headers that send a request to uvicorn: framing and protocol switches it handles.
_HAND_OVER = {b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"}
_NO_BODY_STATUS = (204, 304)


class _Exchange:
    """One request being served: its body as it arrives, and its response as it goes out."""

    __slots__ = (
        "body",
        "body_left",
        "chunked",
        "close",
        "done",
        "door",
        "head_only",
        "started",
        "waiter",
    )

    def __init__(self, door: Door, body_left: int, close: bool, head_only: bool) -> None:
        self.door = door
        self.body = bytearray()
        self.body_left = body_left  # request body bytes not yet read from the client
        self.close = close  # the connection ends after this response
        self.head_only = head_only
        self.started = False
        self.chunked = False
        self.done = False  # the response was sent in full
        self.waiter: asyncio.Future[None] | None = None

    # -- ASGI receive -------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        door = self.door
        while not self.body and self.body_left and not door.lost:
            self.waiter = door.loop.create_future()
            door.read_more()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if door.lost:
            return {"type": "http.disconnect"}
        data = bytes(self.body)
        self.body.clear()
        door.read_more()
        return {"type": "http.request", "body": data, "more_body": self.body_left > 0}

    def fed(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI send ----------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        door = self.door
        if door.lost or self.done:
            return  # as uvicorn: a response to a client that left goes nowhere
        if not self.started:
            # Held until the first body message: head and body leave in one write.
            self.started = True
            door.head = message
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        head = door.head
        if head is not None:
            door.head = None
            out = self._head_bytes(head, body, more)
        else:
            out = []
        if self.head_only:
            pass
        elif self.chunked:
            if body:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more:
                out.append(b"0\r\n\r\n")
        elif body:
            out.append(body)
        if out:
            door.transport.write(b"".join(out))
        if not more:
            self.done = True
        elif door.write_paused:
            await door.drained()

    def _head_bytes(self, head: dict[str, Any], body: bytes, more: bool) -> list[bytes]:
        status = int(head["status"])
        out = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        framed = dated = False
        for name, value in head["headers"]:
            if name == b"content-length":
                framed = True
            elif name == b"date":
                dated = True
            elif name == b"connection" and b"close" in value.lower():
                self.close = True
            out += (name, b": ", value, b"\r\n")
        # uvicorn's Date (refreshed each second by its server loop), unless the grain sent one.
        for name, value in self.door.server_state.default_headers:
            if not (dated and name == b"date"):
                out += (name, b": ", value, b"\r\n")
        if self.head_only or status in _NO_BODY_STATUS:
            self.head_only = True
        elif not framed:
            if more:
                self.chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                out.append(b"content-length: %d\r\n" % len(body))
        if self.close or self.door.closing:
            self.close = True
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return out


_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    found = _REASONS.get(status)
    if found is None:
        import http

        try:
            found = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            found = b""
        _REASONS[status] = found
    return found


class Door(asyncio.Protocol):
    """One client connection (uvicorn's `http` protocol class; see protocol_class)."""

    # Set per server by protocol_class().
    split: Any = None  # app.HostSplit

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.buf = bytearray()
        self.exchange: _Exchange | None = None
        self.task: asyncio.Task[None] | None = None
        self.head: dict[str, Any] | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.lost = False
        self.closing = False  # shutdown asked: close after the response in flight
        self.reading_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._keep_alive: asyncio.TimerHandle | None = None
        self._handed: asyncio.Protocol | None = None
        self._trusted: _TrustedHosts | None = (
            _TrustedHosts(config.forwarded_allow_ips) if config.proxy_headers else None
        )

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(cast(Any, self))
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))

    def data_received(self, data: bytes) -> None:
        self._cancel_keep_alive()
        exchange = self.exchange
        if exchange is not None and exchange.body_left:
            take = min(exchange.body_left, len(data))
            exchange.body += data[:take]
            exchange.body_left -= take
            exchange.fed()
            data = data[take:]
            if len(exchange.body) > READ_AHEAD:
                self._pause_reading()
        if data:
            self.buf += data
            if len(self.buf) > READ_AHEAD:
                self._pause_reading()
        if self.exchange is None:
            self._next()

    def eof_received(self) -> bool | None:
        return None  # the transport closes: a half-closed client gets no more answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server_state.connections.discard(cast(Any, self))
        self._cancel_keep_alive()
        exchange = self.exchange
        if exchange is not None:
            exchange.fed()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drained(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    # -- uvicorn's server calls these --------------------------------------------------------

    def shutdown(self) -> None:
        self.closing = True
        if self.exchange is None:
            self.transport.close()

    # -- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request if its head is in the buffer (or hand the connection over)."""
        buf = self.buf
        if not buf or self.closing or self.lost:
            return
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buf) >= MAX_HEAD:
                self._hand_over()
            return
        parsed = self._parse(bytes(buf[:end]))
        if parsed is None:
            self._hand_over()
            return
        scope, host, kind, length, close = parsed
        del buf[: end + 4]
        exchange = _Exchange(self, length, close, scope["method"] == "HEAD")
        if length:
            take = min(length, len(buf))
            exchange.body += buf[:take]
            exchange.body_left -= take
            del buf[:take]
        self.exchange = exchange
        self.server_state.total_requests += 1
        self.task = self.loop.create_task(self._serve(exchange, scope, host, kind))

    def _parse(self, head: bytes) -> tuple[dict[str, Any], str, tuple[str, str], int, bool] | None:
        """The scope of a plain grain request, or None for anything uvicorn should have."""
        lines = head.split(b"\r\n")
        first = _REQUEST_LINE.fullmatch(lines[0])
        # The two patterns admit no CR, LF, NUL or other control byte (HTAB aside) anywhere.
        if first is None or len(lines) > MAX_HEADERS + 1:
            return None
        headers: list[tuple[bytes, bytes]] = []
        host = length = None
        close = False
        match = _HEADER_LINE.fullmatch
        for line in lines[1:]:
            found = match(line)
            if found is None:
                return None
            name = found.group(1).lower()
            value = found.group(2)
            if name in _HAND_OVER:
                return None
            if name == b"host":
                if host is not None:
                    return None
                host = value
            elif name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 18:
                    return None
                length = int(value)
            elif name == b"connection":
                tokens = [t.strip() for t in value.lower().split(b",")]
                if b"upgrade" in tokens:
                    return None
                close = close or b"close" in tokens
            headers.append((name, value))
        if host is None:
            return None
        kind = self.split.kind_of(host)
        if kind is None:
            return None  # a platform host: uvicorn and Starlette serve it
        target = first.group(2)
        raw_path, _, query = target.partition(b"?")
        if b"#" in target:
            return None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": first.group(1).decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self._client(headers),
            "server": self.server,
            "state": self.app_state.copy(),
        }
        return scope, host.decode("latin-1"), kind, length or 0, close or self.closing

    def _client(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, int] | None:
        """The client's address; behind a trusted proxy, its X-Forwarded-For (as uvicorn)."""
        client = self.client
        trusted = self._trusted
        if trusted is None or client is None or client[0] not in trusted:
            return client
        forwarded = [v for n, v in headers if n == b"x-forwarded-for"]
        if not forwarded:
            return client
        host, port = trusted.get_trusted_client_address(b", ".join(forwarded).decode("latin-1"))
        return (host, port) if host else client

    async def _serve(
        self, exchange: _Exchange, scope: dict[str, Any], host: str, kind: tuple[str, str]
    ) -> None:
        try:
            await self.split.grains.http(scope, exchange.receive, exchange.send, host, kind)
        except Exception:
            log.exception("grain request failed in the frontend")
        finally:
            self._finish(exchange)

    def _finish(self, exchange: _Exchange) -> None:
        self.task = None
        self.head = None
        if self.lost:
            return
        if not exchange.done:
            if not exchange.started:
                body = b"the platform failed to answer\n"
                self.transport.write(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; "
                    b"charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b"
                    % (len(body), body)
                )
            # A response cut short (or none): the connection ends, as a proxy's must.
            self.transport.close()
            return
        if exchange.close or exchange.body_left or self.closing:
            # A body the relay did not read (the grain answered first) is not skipped: close.
            self.transport.close()
            return
        self.exchange = None
        self.read_more()
        if self.buf:
            self._next()
        if self.exchange is None and not self.lost:
            self._keep_alive = self.loop.call_later(
                self.config.timeout_keep_alive, self.transport.close
            )

    # -- reading ------------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def read_more(self) -> None:
        exchange = self.exchange
        if (
            self.reading_paused
            and len(self.buf) <= READ_AHEAD
            and (exchange is None or len(exchange.body) <= READ_AHEAD)
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def _cancel_keep_alive(self) -> None:
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None

    # -- everything else: uvicorn -------------------------------------------------------------

    def _hand_over(self) -> None:
        """The connection goes to uvicorn's protocol from the request at the buffer's start."""
        self._cancel_keep_alive()
        self.server_state.connections.discard(cast(Any, self))
        proto = HttpToolsProtocol(
            config=self.config,
            server_state=self.server_state,
            app_state=self.app_state,
            _loop=self.loop,
        )
        self._handed = proto
        transport = self.transport
        proto.connection_made(transport)
        transport.set_protocol(proto)
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        data = bytes(self.buf)
        self.buf.clear()
        if data:
            proto.data_received(data)


def protocol_class(split: Any) -> type[Door]:
    """The `http` protocol class for uvicorn.Config, bound to the app's HostSplit."""
    return cast(type[Door], type("GrainDoor", (Door,), {"split": split}))
