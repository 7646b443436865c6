"""Grain traffic: HTTP on `ui-<id>` and `api` hosts, authorized, cleaned and relayed to the grain.

WebSockets take the same door (origin, authorization, header rules here) and then go to
grain_websocket.py for the frames.

Owns: the rules of what crosses into a grain (which request headers, which identity headers) and
what comes back (a platform CSP with `frame-ancestors`, no referrer); the pool of relay streams.
Trusts: auth.Authorize for every decision (cached no longer than auth says, dropped on
revocation events); grainmgr's relay tickets.
Never: forwards a platform cookie, an `Authorization` header or a client-sent `X-Sandstorm-*`
header to a grain; accepts a non-GET request (or any WebSocket handshake) carrying a foreign
`Origin`; uses httpx on this
path (ARCHITECTURE §3: a byte stream and h11, nothing heavier).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from typing import Any
from urllib.parse import quote

import grpc
import h11
import wsproto.utilities
from starlette.types import Receive, Scope, Send

from grainhouse_frontend.grain_websocket import GrainWebSocket
from grainhouse_frontend.origins import Decision, Origin, Origins
from grainhouse_proto import auth_pb2, auth_pb2_grpc, grainmgr_pb2, grainmgr_pb2_grpc

log = logging.getLogger("grainhouse.frontend.grain")
HANDSHAKE_TIMEOUT = 30.0
READ_TIMEOUT = 300.0
# Idle streams kept per origin. Every request that finds the pool empty costs a gRPC
# OpenStream, a relay handshake and new connections in the bridge and the app (≈1 ms of CPU
# across the processes, measured by bench/bench_grains.py), so the pool must cover a client's
# usual concurrency (browsers open 6 per host, API clients more); the bridge takes 256 streams.
POOL_PER_ORIGIN = 64
# A pooled stream counts as traffic for grainmgr (an open stream keeps a grain running), so
# idle ones are closed well before grainmgr's idle stop (90 s by default).
POOL_IDLE_SECONDS = 20.0
# Hop-by-hop headers (RFC 9110 §7.6.1) end at this proxy, in both directions.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
# Never sent to a grain: platform credentials, and identity the client might try to forge.
STRIPPED_REQUEST = HOP_BY_HOP | {b"authorization", b"host", b"forwarded", b"x-forwarded-for"}
STRIPPED_RESPONSE = HOP_BY_HOP | {b"x-frame-options", b"referrer-policy"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Not an HTTP method: a WebSocket handshake is checked for its Origin like any unsafe request.
WEBSOCKET = "WEBSOCKET"
DENY_STATUS = {
    auth_pb2.DENY_REASON_UNAUTHENTICATED: 401,
    auth_pb2.DENY_REASON_UNKNOWN_GRAIN: 404,
    auth_pb2.DENY_REASON_NO_ACCESS: 403,
    auth_pb2.DENY_REASON_WRONG_GRAIN: 403,
    auth_pb2.DENY_REASON_ACCOUNT_DISABLED: 403,
    auth_pb2.DENY_REASON_INSUFFICIENT_SCOPE: 403,
}


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Stream:
    """One relay stream into the grain, speaking HTTP/1.1 through h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            # asyncio.timeout, not wait_for: no extra task per read on the hot path.
            async with asyncio.timeout(READ_TIMEOUT):
                data = await self.reader.read(65536)
            self.conn.receive_data(data)

    def reusable(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            try:
                self.conn.start_next_cycle()
                return True
            except h11.LocalProtocolError:
                return False
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def relay_connect(ticket: grainmgr_pb2.StreamTicket) -> _Stream:
    """Open one stream with grainmgr's relay handshake."""
    address = ticket.relay_address
    if address.startswith("unix:"):
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(address[5:]), HANDSHAKE_TIMEOUT
        )
    else:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), HANDSHAKE_TIMEOUT
        )
    writer.write(f"GRAINHOUSE-RELAY/1 {ticket.stream_key_secret}\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
    if answer != b"OK\r\n":
        writer.close()
        raise ConnectionError("the relay refused the stream key")
    return _Stream(reader, writer)


def bearer_from(headers: dict[bytes, bytes]) -> str:
    """A grain API token from `Bearer <t>` or HTTP Basic (any user, token as password)."""
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


class GrainProxy:
    def __init__(
        self,
        origins: Origins,
        auth: auth_pb2_grpc.AuthStub,
        grainmgr: grainmgr_pb2_grpc.GrainManagerStub,
        public_url: str,
        cookie_names: set[str],
    ) -> None:
        self.origins = origins
        self.auth = auth
        self.grainmgr = grainmgr
        self.public_url = public_url.rstrip("/")
        self.scheme = public_url.split("://", 1)[0]
        self.cookie_names = cookie_names
        self._pool: dict[str, list[_Stream]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.csp = (
            "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; "
            "base-uri 'self'; form-action 'self'; object-src 'none'; "
            f"frame-ancestors {self.public_url}"
        )

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        host = headers.get(b"host", b"").decode("latin-1")
        kind = self.origins.host_kind(host)
        try:
            if kind is None:
                raise Denied(404, "unknown host")
            origin = await self._origin(kind, headers, host, (scope.get("client") or ("",))[0])
            self._check_origin_header(scope["method"], headers, host, kind[0])
            decision = await self._decide(origin)
            await self._forward(origin, decision, scope, receive, send, host)
        except Denied as exc:
            await self._plain(send, exc.status, exc.message, kind is not None and kind[0] == "api")
        except (TimeoutError, ConnectionError, OSError, h11.ProtocolError) as exc:
            log.warning("grain relay failed: %s", type(exc).__name__)
            await self._plain(send, 502, "the grain did not answer", False)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = GrainWebSocket(self, scope, receive, send)
        if (await receive())["type"] != "websocket.connect":
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        host = headers.get(b"host", b"").decode("latin-1")
        kind = self.origins.host_kind(host)
        try:
            if kind is None:
                raise Denied(404, "unknown host")
            self._check_origin_header(WEBSOCKET, headers, host, kind[0])
            origin = await self._origin(kind, headers, host, (scope.get("client") or ("",))[0])
            decision = await self._decide(origin)
            origin.user_agent = headers.get(b"user-agent", b"").decode("latin-1")[:256]
            await conn.run(origin, decision, host)
        except Denied as exc:
            await conn.refuse(exc.status, exc.message)
        except (
            TimeoutError,
            ConnectionError,
            OSError,
            h11.ProtocolError,
            wsproto.utilities.ProtocolError,
        ) as exc:
            log.warning("grain websocket relay failed: %s", type(exc).__name__)
            if not conn.accepted:
                with contextlib.suppress(Exception):
                    await conn.refuse(502, "the grain did not answer")

    async def still_allowed(self, origin: Origin) -> bool:
        """Whether an open connection through `origin` may go on (auth's answer, cached)."""
        if origin.session_type != "api" and self.origins.get(origin.origin_id) is None:
            return False
        try:
            await self._decide(origin)
        except Denied as exc:
            return exc.status == 503  # auth unreachable: keep what is open, refuse new ones
        return True

    async def _plain(self, send: Send, status: int, message: str, api: bool) -> None:
        body = f"{message}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", self.csp.encode()),
        ]
        if status == 401 and api:
            headers.append((b"www-authenticate", b'Basic realm="grainhouse grain API"'))
        with contextlib.suppress(Exception):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    # -- who and what ---------------------------------------------------------------------

    async def _origin(
        self, kind: tuple[str, str], headers: dict[bytes, bytes], host: str, client: str = ""
    ) -> Origin:
        what, oid = kind
        if what == "ui":
            origin = self.origins.get(oid) if oid else None
            if origin is None:
                raise Denied(404, "this grain session has ended: open the grain again")
            return origin
        token = bearer_from(headers)
        if not token:
            raise Denied(401, "send a grain API token (Bearer, or Basic with it as password)")
        key = "api" + hashlib.sha256(token.encode()).hexdigest()[:40]
        origin = self.origins.get(key)
        if origin is not None:
            return origin
        try:
            reply = await self.auth.AuthenticateToken(
                auth_pb2.AuthenticateTokenRequest(bearer_secret=token, client_address=client),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            raise Denied(401, "invalid or expired token") from exc
        if not reply.principal.grain_id:
            raise Denied(403, "this host takes grain API tokens only")
        return self.origins.add(
            Origin(
                key,
                reply.principal.grain_id,
                auth_pb2.Credential(bearer_secret=token),
                tab_id=key[3:19],
                session_type="api",
            )
        )

    def _check_origin_header(
        self, method: str, headers: dict[bytes, bytes], host: str, what: str
    ) -> None:
        sent = headers.get(b"origin")
        if sent is None or method in SAFE_METHODS:
            return
        if sent.decode("latin-1").lower() != f"{self.scheme}://{host}".lower():
            raise Denied(403, "cross-origin request refused")

    async def _decide(self, origin: Origin) -> Decision:
        d = origin.decision
        if d is not None and d.expires > time.monotonic():
            return d
        try:
            reply = await self.auth.Authorize(
                auth_pb2.AuthorizeRequest(credential=origin.credential, grain_id=origin.grain_id),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            # On any doubt, refuse (auth.proto: errors mean deny).
            raise Denied(503, "cannot check access right now") from exc
        if not reply.allowed:
            origin.decision = None
            self.origins.drop(origin.origin_id)
            raise Denied(DENY_STATUS.get(reply.deny_reason, 403), "access to this grain ended")
        decision = Decision(
            list(reply.permissions),
            reply.identity,
            list(reply.grant_chain),
            reply.principal.credential_id,
            time.monotonic() + min(reply.cache_ttl_seconds, 30),
        )
        origin.decision = decision if reply.cache_ttl_seconds else None
        return decision

    # -- the relay ------------------------------------------------------------------------

    async def _open_stream(
        self, origin: Origin, decision: Decision, fresh: bool = False
    ) -> _Stream:
        if origin.grainmgr_session and tuple(decision.permissions) != origin.session_permissions:
            # The role changed (narrowed or widened): a new grainmgr session carries it.
            origin.grainmgr_session = ""
            for stale in self._pool.pop(origin.origin_id, []):
                stale.close()
        pool = None if fresh else self._pool.get(origin.origin_id)
        while pool:
            stream = pool.pop()
            if not stream.writer.is_closing() and not stream.reader.at_eof():
                return stream
            stream.close()
        if origin.grainmgr_session:
            try:
                ticket = await self.grainmgr.OpenStream(
                    grainmgr_pb2.OpenStreamRequest(
                        grain_id=origin.grain_id, session_id=origin.grainmgr_session
                    ),
                    timeout=10,
                )
                return await relay_connect(ticket)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    raise ConnectionError("grainmgr refused a stream") from exc
                origin.grainmgr_session = ""
        try:
            opened = await self.grainmgr.OpenSession(
                grainmgr_pb2.OpenSessionRequest(
                    grain_id=origin.grain_id,
                    identity=decision.identity,
                    permissions=decision.permissions,
                    session_type=grainmgr_pb2.SESSION_TYPE_API
                    if origin.session_type == "api"
                    else grainmgr_pb2.SESSION_TYPE_NORMAL,
                    tab_id=origin.tab_id,
                    base_path=self._base_path(origin),
                    acting_account_id=getattr(decision.identity, "user_id", ""),
                    user_agent=origin.user_agent,
                ),
                timeout=90,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Denied(409, "this grain cannot start: " + (exc.details() or "")) from exc
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Denied(404, "no such grain") from exc
            raise ConnectionError("grainmgr could not open a session") from exc
        origin.grainmgr_session = opened.session_id
        origin.session_permissions = tuple(decision.permissions)
        return await relay_connect(opened.stream)

    def _base_path(self, origin: Origin) -> str:
        if origin.session_type == "api":
            return self.origins.api_url(self.scheme)
        return self.origins.url(origin.origin_id, self.scheme)

    def _request_headers(
        self, origin: Origin, decision: Decision, raw: list[tuple[bytes, bytes]], host: str
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = [(b"host", host.encode("latin-1"))]
        for name, value in raw:
            lname = name.lower()
            if lname in STRIPPED_REQUEST or lname.startswith(b"x-sandstorm-"):
                continue
            if lname == b"cookie":
                value = self._strip_platform_cookies(value)
                if not value:
                    continue
            out.append((lname, value))
        ident: Any = decision.identity
        add = {
            "x-sandstorm-username": quote(ident.display_name or "Anonymous", safe=""),
            "x-sandstorm-permissions": ",".join(decision.permissions),
            "x-sandstorm-session-id": origin.grainmgr_session,
            "x-sandstorm-tab-id": origin.tab_id,
            "x-sandstorm-session-type": origin.session_type,
            "x-sandstorm-base-path": self._base_path(origin),
        }
        if ident.user_id and not ident.is_anonymous:
            add["x-sandstorm-user-id"] = ident.user_id
        if ident.preferred_handle:
            add["x-sandstorm-preferred-handle"] = ident.preferred_handle
        out += [(k.encode(), v.encode("latin-1", "replace")) for k, v in add.items()]
        return out

    def _strip_platform_cookies(self, value: bytes) -> bytes:
        kept = []
        for part in value.decode("latin-1").split(";"):
            name = part.split("=", 1)[0].strip()
            if name and name not in self.cookie_names:
                kept.append(part.strip())
        return "; ".join(kept).encode("latin-1")

    async def _forward(
        self,
        origin: Origin,
        decision: Decision,
        scope: Scope,
        receive: Receive,
        send: Send,
        host: str,
    ) -> None:
        raw_headers = list(scope["headers"])
        lowered = {k.lower(): v for k, v in raw_headers}
        origin.user_agent = lowered.get(b"user-agent", b"").decode("latin-1")[:256]
        headers = self._request_headers(origin, decision, raw_headers, host)
        length = lowered.get(b"content-length")
        has_body = length is not None or b"transfer-encoding" in lowered
        if length is not None:
            headers.append((b"content-length", length))
        elif has_body:
            headers.append((b"transfer-encoding", b"chunked"))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        stream = await self._open_stream(origin, decision)
        ok = False
        try:
            await stream.send(h11.Request(method=scope["method"], target=target, headers=headers))
            if has_body:
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    if body:
                        await stream.send(h11.Data(data=body))
                    more = message.get("more_body", False)
            await stream.send(h11.EndOfMessage())
            response = await stream.next_event()
            if not isinstance(response, h11.Response):
                raise ConnectionError("the grain sent no response")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": self._response_headers(response.headers),
                }
            )
            while True:
                event = await stream.next_event()
                if isinstance(event, h11.Data):
                    await send(
                        {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                    )
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            await send({"type": "http.response.body", "body": b""})
            ok = stream.reusable()
        finally:
            pool = self._pool.setdefault(origin.origin_id, [])
            if ok and len(pool) < POOL_PER_ORIGIN:
                stream.idle_since = time.monotonic()
                pool.append(stream)
            else:
                stream.close()

    def allowed_response_headers(self, raw: Any) -> list[tuple[bytes, bytes]]:
        """A grain's response headers minus what ends here (hop-by-hop, framing policy)."""
        return [
            (bytes(k).lower(), bytes(v))
            for k, v in raw
            if bytes(k).lower() not in STRIPPED_RESPONSE
        ]

    def _response_headers(self, raw: Any) -> list[tuple[bytes, bytes]]:
        # The grain's own CSP stays (both apply); ours adds frame-ancestors and the walls.
        out = self.allowed_response_headers(raw)
        out += [
            (b"content-security-policy", self.csp.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-content-type-options", b"nosniff"),
        ]
        return out

    async def _sweep(self) -> None:
        """Close pooled streams idle for POOL_IDLE_SECONDS, so idle grains can stop."""
        while True:
            await asyncio.sleep(POOL_IDLE_SECONDS / 4)
            limit = time.monotonic() - POOL_IDLE_SECONDS
            for origin_id, pool in list(self._pool.items()):
                keep = [s for s in pool if s.idle_since > limit]
                for stale in pool:
                    if stale.idle_since <= limit:
                        stale.close()
                if keep:
                    pool[:] = keep
                else:
                    del self._pool[origin_id]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for pool in self._pool.values():
            for stream in pool:
                stream.close()
        self._pool.clear()
