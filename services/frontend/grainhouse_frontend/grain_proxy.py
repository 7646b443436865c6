"""Grain traffic: HTTP on `ui-<id>` and `api` hosts, authorized, cleaned and relayed to the grain.

WebSockets take the same door (origin, authorization, header rules) and then go to
grain_websocket.py for the frames. What crosses into a grain and back is grain_headers.py's.

Owns: the door of grain traffic (which host is which origin, the Origin check, authorization
on every request with auth's cached decision, the platform's own short answers) and the
forwarding of each request over a stream of its origin (grain_streams.py lends and pools them).
Trusts: auth for every decision (ResolveOrigin for `ui-` origins, Authorize for API-host
tokens; cached no longer than auth says, dropped on revocation events); grainmgr's relay
tickets; the ASGI server (uvicorn's httptools or h11 parser) to have refused CR, LF and NUL
in the client's method, target and headers.
Never: forwards a platform cookie, an `Authorization` header or a client-sent `X-Sandstorm-*`
header to a grain; accepts a non-GET request (or any WebSocket handshake) carrying a foreign
`Origin`; uses httpx on this path (ARCHITECTURE §3: a byte stream and a light HTTP/1.1 client,
grain_upstream.py, nothing heavier).

The hot path (measured with py-spy under bench/bench_grains.py): one pass over the client's
headers into one request head (the identity headers are built once per cached decision), one
write to a pooled stream, the response parsed by grain_upstream.py, and a whole small body
sent to the client with its head in two ASGI messages. The host is classified once, by the
app's host split, which calls serve_http directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
import h11
import wsproto.utilities
from starlette.types import Receive, Scope, Send

from grainhouse_frontend.grain_headers import CHUNKED_HEAD_END, HeaderRules
from grainhouse_frontend.grain_refusal import Denied
from grainhouse_frontend.grain_relay import RelayStream, upstream_connect
from grainhouse_frontend.grain_streams import POOL_IDLE_SECONDS, GrainStreams
from grainhouse_frontend.grain_upstream import StreamClosed, Upstream
from grainhouse_frontend.grain_websocket import GrainWebSocket
from grainhouse_frontend.identity import wait_seconds
from grainhouse_frontend.lookup_budget import LookupBudget
from grainhouse_frontend.origins import Decision, Origin, Origins, decision_from
from grainhouse_proto import auth_pb2, auth_pb2_grpc, grainmgr_pb2_grpc

log = logging.getLogger("grainhouse.frontend.grain")
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


ENDED = "this grain session has ended: open the grain again"


class _Answer:
    """The ASGI `send` of one request, remembering the status it sent (for the metrics)."""

    __slots__ = ("send", "started", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.status = 500  # nothing sent: counted as the server's failure

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
        await self.send(message)


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


def _asked(origin: Origin) -> Callable[[asyncio.Future[Decision]], None]:
    """Forget the origin's finished ask (the next expiry asks again); its error is taken
    here too, so an ask nobody waits for any more logs no "never retrieved" warning."""

    def done(future: asyncio.Future[Decision]) -> None:
        if origin.deciding is future:
            origin.deciding = None
        if not future.cancelled():
            future.exception()

    return done


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
        self.lookups = LookupBudget()  # unknown `ui-` origins each address may ask auth about
        self.auth = auth
        self.grainmgr = grainmgr
        self.public_url = public_url.rstrip("/")
        self.scheme = public_url.split("://", 1)[0]
        self.streams = GrainStreams(grainmgr, self._base_path)
        self._sweeper: asyncio.Task[None] | None = None
        self.headers = HeaderRules(public_url, cookie_names, self._base_path)
        self.csp = self.headers.csp

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Plain ASGI entry (the app's host split calls serve_http directly, host known)."""
        if scope["type"] == "websocket":
            self._start_sweeper()
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        host = ""
        for name, value in scope["headers"]:
            if name.lower() == b"host":
                host = value.decode("latin-1")
                break
        await self.serve_http(scope, receive, send, host, self.origins.host_kind(host))

    async def serve_http(
        self, scope: Scope, receive: Receive, send: Send, host: str, kind: tuple[str, str] | None
    ) -> int:
        """Answer one HTTP request to a grain host; returns the status sent (for the metrics).

        `kind` is `Origins.host_kind(host)`, worked out once by the caller."""
        if self._sweeper is None:
            self._start_sweeper()
        answer = _Answer(send)
        try:
            if kind is None:
                raise Denied(404, "unknown host")
            headers = {k.lower(): v for k, v in scope["headers"]}
            origin = await self._origin(kind, headers, host, (scope.get("client") or ("",))[0])
            self._check_origin_header(scope["method"], headers, host, kind[0])
            decision = await self._decide(origin)
            await self._forward(origin, decision, scope, receive, answer, host, headers)
        except Denied as exc:
            await self._plain(
                answer,
                exc.status,
                exc.message,
                kind is not None and kind[0] == "api",
                exc.retry_after,
            )
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("grain relay failed: %s", type(exc).__name__)
            if not answer.started:
                await self._plain(answer, 502, "the grain did not answer", False)
        return answer.status

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

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

    async def _plain(
        self, send: Send, status: int, message: str, api: bool, retry_after: int = 0
    ) -> None:
        """A short text answer from the platform itself (ignored once a response started)."""
        body = f"{message}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", self.csp.encode()),
        ]
        if status == 401 and api:
            headers.append((b"www-authenticate", b'Basic realm="grainhouse grain API"'))
        if retry_after > 0:
            headers.append((b"retry-after", str(retry_after).encode()))
        with contextlib.suppress(Exception):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    # -- who and what ---------------------------------------------------------------------

    async def _origin(
        self, kind: tuple[str, str], headers: dict[bytes, bytes], host: str, client: str = ""
    ) -> Origin:
        what, oid = kind
        if what == "ui":
            if not oid:
                raise Denied(404, ENDED)
            origin = self.origins.get(oid)
            if origin is None:
                # Not known here (made through another frontend, or forgotten): auth's record,
                # within this address's lookup budget (an unknown host costs auth a query).
                if self.origins.is_gone(oid):
                    raise Denied(404, ENDED)
                wait = self.lookups.take(client, time.monotonic())
                if wait:
                    raise Denied(429, f"too many unknown grain sessions: retry in {wait} s", wait)
                origin = await self._resolve(oid)
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
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # this address guessed
                wait = wait_seconds(exc.details() or "")
                raise Denied(429, f"too many attempts: try again in {wait} s", wait) from exc
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise Denied(503, "cannot check the token right now") from exc
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

    async def _ask_origin(self, oid: str) -> auth_pb2.ResolveOriginResponse:
        """auth.ResolveOrigin, its refusals mapped as a `ui-` origin answered before.

        No client_address is sent: an origin id is 128 random bits, so unknown ids are stale
        tabs, not guesses, and counting them would make a browser's address wait for the
        platform's other credentials. Repeated asks for one dead id are answered before this,
        in `_origin`, for a while (Origins.gone)."""
        try:
            return cast(
                auth_pb2.ResolveOriginResponse,
                await self.auth.ResolveOrigin(
                    auth_pb2.ResolveOriginRequest(origin_id=oid), timeout=5
                ),
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                self.origins.drop(oid, gone=True)
                raise Denied(404, ENDED) from exc
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # only if an address is ever sent
                wait = wait_seconds(exc.details() or "")
                raise Denied(429, f"too many attempts: try again in {wait} s", wait) from exc
            # On any doubt, refuse (auth.proto: errors mean deny).
            raise Denied(503, "cannot check access right now") from exc

    async def _resolve(self, oid: str) -> Origin:
        reply = await self._ask_origin(oid)
        origin = Origin(
            oid,
            reply.grain_id,
            None,
            tab_id=reply.tab_id,
            session_type="api"
            if reply.session_type == auth_pb2.ORIGIN_SESSION_TYPE_API
            else "normal",
        )
        self._apply(origin, reply.decision)
        return self.origins.add(origin)

    async def _decide(self, origin: Origin) -> Decision:
        """auth's decision for the origin: cached until it expires, then asked for once
        however many requests need it meanwhile (a burst at expiry, or every pooled connection
        of a busy grain at once, would otherwise each make the same Authorize call)."""
        d = origin.decision
        if d is not None and d.expires > time.monotonic():
            return d
        asking = origin.deciding
        if asking is None:
            asking = origin.deciding = asyncio.ensure_future(self._ask_decision(origin))
            asking.add_done_callback(_asked(origin))
        return await asyncio.shield(asking)

    async def _ask_decision(self, origin: Origin) -> Decision:
        if origin.credential is None:  # a `ui-` origin: auth holds its credential
            return self._apply(origin, (await self._ask_origin(origin.origin_id)).decision)
        try:
            reply = await self.auth.Authorize(
                auth_pb2.AuthorizeRequest(credential=origin.credential, grain_id=origin.grain_id),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            # On any doubt, refuse (auth.proto: errors mean deny).
            raise Denied(503, "cannot check access right now") from exc
        return self._apply(origin, reply)

    def _apply(self, origin: Origin, reply: auth_pb2.AuthorizeResponse) -> Decision:
        """Cache auth's answer on the origin; a refusal ends the origin (auth closed it too)."""
        if not reply.allowed:
            origin.decision = None
            self.origins.drop(origin.origin_id)
            raise Denied(DENY_STATUS.get(reply.deny_reason, 403), "access to this grain ended")
        decision = decision_from(reply, time.monotonic())
        origin.decision = decision if reply.cache_ttl_seconds else None
        return decision

    # -- the relay ------------------------------------------------------------------------

    async def open_websocket_stream(self, origin: Origin, decision: Decision) -> RelayStream:
        """A fresh stream for one WebSocket (never from or back to the pool)."""
        return await self.streams.open_websocket_stream(origin, decision)

    def _base_path(self, origin: Origin) -> str:
        if origin.session_type == "api":
            return self.origins.api_url(self.scheme)
        return self.origins.url(origin.origin_id, self.scheme)

    async def _forward(
        self,
        origin: Origin,
        decision: Decision,
        scope: Scope,
        receive: Receive,
        send: Send,
        host: str,
        headers: dict[bytes, bytes],
    ) -> None:
        origin.user_agent = headers.get(b"user-agent", b"").decode("latin-1")[:256]
        # Request body framing: the client's Content-Length goes through with its header; a
        # chunked body (the ASGI server took its chunks apart) is chunked again for the grain.
        chunked = b"content-length" not in headers and b"transfer-encoding" in headers
        has_body = chunked or b"content-length" in headers
        method = scope["method"]
        stream, pooled = await self.streams.take_stream(origin, decision)
        end = CHUNKED_HEAD_END if chunked else b"\r\n"
        try:
            await stream.write(self.headers.request_head(origin, decision, scope, host, end))
            if has_body and not await self._send_body(stream, receive, chunked):
                stream.close()
                return
            response = await stream.read_head(method == "HEAD")
        except StreamClosed:
            stream.close()
            if not (pooled and not has_body and method in SAFE_METHODS):
                raise
            # A pooled stream the grain's side closed meanwhile: the request never reached the
            # grain, so a safe request without a body goes again, once, on a fresh stream.
            stream = await self.streams.new_stream(origin, decision, upstream_connect)
            try:
                await stream.write(self.headers.request_head(origin, decision, scope, host, end))
                response = await stream.read_head(method == "HEAD")
            except BaseException:
                stream.close()
                raise
        except BaseException:
            stream.close()
            raise
        ok = False
        try:
            # What came with the head is checked first: a body broken from its start still
            # gets a 502. Later breaks can only cut the response short (the client's connection
            # is closed, as a proxy must: RFC 9112 §8).
            data, done = await stream.read_body(wait=False)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": self.headers.response_headers(response.headers, response.status),
                }
            )
            while not done:
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                data, done = await stream.read_body()
            await send({"type": "http.response.body", "body": data})
            ok = stream.usable()
        finally:
            self.streams.give_back(origin, stream, ok)

    async def _send_body(self, stream: Upstream, receive: Receive, chunked: bool) -> bool:
        """Stream the client's body to the grain; False if the client left first."""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if chunked:
                tail = b"\r\n" if more else b"\r\n0\r\n\r\n"
                if body:
                    await stream.write(b"%x\r\n%b%b" % (len(body), body, tail))
                elif not more:
                    await stream.write(b"0\r\n\r\n")
            elif body:
                await stream.write(body)
        return True

    async def _sweep(self) -> None:
        """Close pooled streams idle for POOL_IDLE_SECONDS, so idle grains can stop; drop
        expired identity headers on the same tick."""
        while True:
            await asyncio.sleep(POOL_IDLE_SECONDS / 4)
            self.streams.sweep()
            self.headers.forget_expired(time.monotonic())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.streams.close()
        self.headers.clear()
