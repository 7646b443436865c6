"""Grain WebSockets: a browser's (or API client's) WebSocket spliced, frame by frame, to the grain.

Owns: one stream per WebSocket (handed off or relayed by grainmgr, see grain_relay; never
pooled: after the upgrade it is the socket), the grain side of the WebSocket protocol on it (a
`wsproto` client), and the mapping of frames and close codes between the grain and the ASGI
server that speaks to the browser.
Trusts: GrainProxy for who may enter and what crosses (the same authorization, the same request
header rules as plain HTTP); uvicorn for the browser side of the protocol (framing, masking,
pings from the browser, size limit).
Never: forwards a platform cookie, an `Authorization` header or a client-sent `X-Sandstorm-*`
header; accepts a handshake whose `Origin` is not the grain host itself (browsers do not apply
the same-origin policy to WebSockets, so every handshake is checked, GET or not); keeps a socket
open once auth says the access ended.

Why wsproto: the sans-IO WebSocket state machine from h11's authors (it uses h11 for the
handshake), so the grain side is parsed by well-kept code and no second event loop or HTTP
client enters the data path (ARCHITECTURE §3: no httpx here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import wsproto
import wsproto.connection
import wsproto.events as wse
import wsproto.utilities
from starlette.types import Receive, Scope, Send

from grainhouse_frontend.origins import Decision, Origin

if TYPE_CHECKING:
    from grainhouse_frontend.grain_proxy import GrainProxy
    from grainhouse_frontend.grain_relay import RelayStream as _Stream

log = logging.getLogger("grainhouse.frontend.grain.ws")

HANDSHAKE_TIMEOUT = 90.0  # the grain may have to start first
# How often an open WebSocket asks again whether its access still stands (a revocation drops
# the cached decision at once, so this is the delay before an open socket notices).
RECHECK_SECONDS = 5.0
# A message the grain sends in pieces is put together up to this size (uvicorn's default limit
# for the browser side, so both directions agree).
MAX_MESSAGE = 16 * 1024 * 1024
READ_CHUNK = 65536
# Our handshake carries these; the browser's versions of them stay with uvicorn.
HANDSHAKE_HEADERS = {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}
# Close codes an endpoint must never put on the wire (RFC 6455 §7.4.1): what we send instead.
RESERVED_CLOSE = {1005: 1000, 1006: 1011, 1015: 1011}
OPEN = wsproto.connection.ConnectionState.OPEN


class GrainWebSocket:
    """One WebSocket through the proxy: handshake with auth and the grain, then both pumps."""

    def __init__(self, proxy: GrainProxy, scope: Scope, receive: Receive, send: Send) -> None:
        self.proxy = proxy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.accepted = False

    async def run(self, origin: Origin, decision: Decision, host: str) -> None:
        stream = await self.proxy.open_websocket_stream(origin, decision)
        try:
            if await self._handshake(stream, origin, decision, host):
                await self._pump(stream, origin)
        finally:
            stream.close()

    async def refuse(self, status: int, message: str) -> None:
        """Refuse before the handshake: a real HTTP status where the server allows it."""
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = f"{message}\n".encode()
            await self.send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.send({"type": "websocket.close", "code": 1008})

    # -- the handshake with the grain -------------------------------------------------------

    async def _handshake(
        self, stream: _Stream, origin: Origin, decision: Decision, host: str
    ) -> bool:
        raw = [(k, v) for k, v in self.scope["headers"] if k.lower() not in HANDSHAKE_HEADERS]
        headers = [
            (k, v)
            for k, v in self.proxy.headers.request_headers(origin, decision, raw, host)
            if k != b"host"
        ]
        target = self.scope.get("raw_path") or self.scope["path"].encode()
        if self.scope.get("query_string"):
            target += b"?" + self.scope["query_string"]
        await self._write(
            stream,
            wse.Request(
                host=host,
                target=target.decode("latin-1"),
                extra_headers=headers,
                subprotocols=list(self.scope.get("subprotocols") or []),
            ),
        )
        while True:
            data = await asyncio.wait_for(stream.read(READ_CHUNK), HANDSHAKE_TIMEOUT)
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, wse.AcceptConnection):
                    await self.send(
                        {
                            "type": "websocket.accept",
                            "subprotocol": event.subprotocol,
                            "headers": self._accept_headers(event.extra_headers),
                        }
                    )
                    self.accepted = True
                    return True
                if isinstance(event, wse.RejectConnection):
                    await self._relay_rejection(stream, event)
                    return False
            if not data:
                raise ConnectionError("the grain closed the stream during the handshake")

    def _accept_headers(self, raw: Any) -> list[tuple[bytes, bytes]]:
        # The 101's own headers (Set-Cookie, say) pass under the same rules as any response.
        return [
            (k, v)
            for k, v in self.proxy.headers.allowed_response_headers(raw)
            if k not in HANDSHAKE_HEADERS
        ]

    async def _relay_rejection(self, stream: _Stream, event: wse.RejectConnection) -> None:
        """The grain answered the upgrade with plain HTTP: pass its status on (body capped)."""
        body = b""
        more = event.has_body
        while more and len(body) < READ_CHUNK:
            for ev in self.ws.events():
                if isinstance(ev, wse.RejectData):
                    body += ev.data
                    more = more and not ev.body_finished
            if not more:
                break
            data = await asyncio.wait_for(stream.read(READ_CHUNK), HANDSHAKE_TIMEOUT)
            if not data:
                break
            self.ws.receive_data(data)
        await self.refuse(event.status_code, body[:READ_CHUNK].decode("utf-8", "replace").strip())

    # -- frames both ways -------------------------------------------------------------------

    async def _pump(self, stream: _Stream, origin: Origin) -> None:
        grain_side = asyncio.create_task(self._grain_to_client(stream))
        client_side = asyncio.create_task(self._client_to_grain(stream))
        tasks = {grain_side, client_side, asyncio.create_task(self._watch_access(stream, origin))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if client_side in done and not grain_side.done():
                # The client left: give the grain a moment to answer our close frame.
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(grain_side), 2.0)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.warning("grain websocket ended: %s", type(t.exception()).__name__)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_client(1011, "")

    async def _grain_to_client(self, stream: _Stream) -> str:
        parts: list[Any] = []
        size = 0
        data = b"-"  # frames that came with the handshake's answer are waiting already
        while True:
            for event in self.ws.events():
                if isinstance(event, wse.TextMessage | wse.BytesMessage):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > MAX_MESSAGE:
                        await self._close_grain(stream, 1009, "message too big")
                        await self._close_client(1009, "message too big")
                        return "grain"
                    if event.message_finished:
                        if isinstance(event, wse.TextMessage):
                            await self.send({"type": "websocket.send", "text": "".join(parts)})
                        else:
                            await self.send({"type": "websocket.send", "bytes": b"".join(parts)})
                        parts, size = [], 0
                elif isinstance(event, wse.Ping):
                    await self._write(stream, event.response())
                elif isinstance(event, wse.CloseConnection):
                    if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        with contextlib.suppress(OSError, wsproto.utilities.LocalProtocolError):
                            await self._write(stream, event.response())
                    await self._close_client(event.code, event.reason or "")
                    return "grain"
            if not data:
                await self._close_client(1011, "")
                return "grain"
            data = await stream.read(READ_CHUNK)
            try:
                self.ws.receive_data(data or None)
            except wsproto.utilities.LocalProtocolError:
                return "grain"  # already closed on our side

    async def _client_to_grain(self, stream: _Stream) -> str:
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("text") is not None:
                    await self._write(stream, wse.TextMessage(data=message["text"]))
                elif message.get("bytes") is not None:
                    await self._write(stream, wse.BytesMessage(data=message["bytes"]))
            elif kind == "websocket.disconnect":
                self.accepted = False  # the browser side is gone: nothing more to send it
                code = int(message.get("code") or 1000)
                await self._close_grain(stream, RESERVED_CLOSE.get(code, code), "")
                return "client"

    async def _watch_access(self, stream: _Stream, origin: Origin) -> str:
        """Close the socket once auth says the access ended (revoked, signed out, disabled)."""
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            if not await self.proxy.still_allowed(origin):
                await self._close_grain(stream, 1001, "")
                await self._close_client(1008, "access to this grain ended")
                return "access"

    # -- small steps ------------------------------------------------------------------------

    async def _write(self, stream: _Stream, event: wse.Event) -> None:
        if isinstance(event, wse.Message | wse.Ping | wse.Pong) and self.ws.state is not OPEN:
            return  # closing: frames racing the close are dropped, as RFC 6455 allows
        data = self.ws.send(event)
        if data:
            await stream.write(data)

    async def _close_grain(self, stream: _Stream, code: int, reason: str) -> None:
        if self.ws.state is OPEN:
            with contextlib.suppress(OSError, wsproto.utilities.LocalProtocolError):
                await self._write(stream, wse.CloseConnection(code=code, reason=reason))

    async def _close_client(self, code: int, reason: str) -> None:
        if not self.accepted:
            return
        self.accepted = False
        code = RESERVED_CLOSE.get(code, code)
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
