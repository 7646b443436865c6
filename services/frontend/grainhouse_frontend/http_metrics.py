"""HTTP request metrics for the frontend, labelled by route template (never a raw path).

Owns: `grainhouse_frontend_http_requests_total` and
`grainhouse_frontend_http_request_duration_seconds`.
Trusts: Starlette's router to say which route template matched; `Origins.host_kind` to say
which kind of grain host a request came to.
Never: labels with a raw path, query, host, grain id, origin id, user id or token.

Platform requests are labelled with their route template (`unmatched` when none). Grain traffic
(the `ui-<id>.` and `api.` hosts, which never reach the platform router) gets one of three
fixed labels: `grain:ui` (HTTP on a session origin, including unknown `ui-` origins),
`grain:api` (HTTP on the API host) and `grain:websocket` (a WebSocket handshake on either).
A WebSocket is counted once, when its handshake is answered (101 accepted, 403 refused, or
the status of the HTTP answer that refused it); its duration is the time to that answer, not
the socket's lifetime.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import Counter, Histogram
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grainhouse_common.metrics import LATENCY_BUCKETS
from grainhouse_frontend.origins import Origins

REQUESTS = Counter(
    "grainhouse_frontend_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
SECONDS = Histogram(
    "grainhouse_frontend_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# WebDAV and CalDAV clients use these on the API host; still a fixed set.
_GRAIN_METHODS = _METHODS | {"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK",
                             "REPORT", "MKCALENDAR"}  # fmt: skip
GRAIN_UI, GRAIN_API, GRAIN_WEBSOCKET = "grain:ui", "grain:api", "grain:websocket"
# Labelled children, looked up once: (method, route, status) is a bounded set (fixed methods,
# route templates, HTTP statuses), and `labels()` costs a lock and a tuple per call.
_CHILDREN: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}


def _observe(method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = (
            REQUESTS.labels(method=method, route=route, status=str(status)).inc,
            SECONDS.labels(route=route).observe,
        )
    child[0]()
    child[1](seconds)


class GrainHttp(Protocol):
    """The grain proxy's HTTP entry, as the grain metrics see it."""

    def serve_http(
        self, scope: Scope, receive: Receive, send: Send, host: str, kind: tuple[str, str] | None
    ) -> Awaitable[int]: ...


def route_template(router: Router, scope: Scope) -> str:
    for route in router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


class HttpMetrics:
    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _counted(
            self.app, scope, receive, send, lambda: route_template(self.router, scope), _METHODS
        )


async def _counted(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Callable[[], str],
    methods: set[str],
) -> None:
    """Run one HTTP request through `app` and count it under `route()` (a bounded label)."""
    start = time.perf_counter()
    status = 500

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    finally:
        method = scope["method"] if scope["method"] in methods else "other"
        _observe(method, route(), status, time.perf_counter() - start)


def _host(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return str(value.decode("latin-1"))
    return ""


class GrainHttpMetrics:
    """The same two families for grain traffic, with the fixed `grain:*` route labels."""

    def __init__(self, app: ASGIApp, origins: Origins, proxy: GrainHttp | None = None) -> None:
        self.app = app
        self.origins = origins
        self.proxy = proxy

    async def http(
        self, scope: Scope, receive: Receive, send: Send, host: str, kind: tuple[str, str] | None
    ) -> None:
        """One HTTP request to a grain host whose kind the caller worked out (the hot path:
        no wrapper around `send`, the proxy returns the status it sent)."""
        assert self.proxy is not None
        start = time.perf_counter()
        status = 500
        try:
            status = await self.proxy.serve_http(scope, receive, send, host, kind)
        finally:
            method = scope["method"] if scope["method"] in _GRAIN_METHODS else "other"
            route = GRAIN_API if kind is not None and kind[0] == "api" else GRAIN_UI
            _observe(method, route, status, time.perf_counter() - start)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = self.origins.host_kind(_host(scope))
        route = GRAIN_API if kind is not None and kind[0] == "api" else GRAIN_UI
        await _counted(self.app, scope, receive, send, lambda: route, _GRAIN_METHODS)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            _observe("GET", GRAIN_WEBSOCKET, status, time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                count(101)
            elif kind == "websocket.close":
                count(403)  # a close before the accept is a refused handshake (ASGI spec)
            elif kind == "websocket.http.response.start":
                count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            count(500)  # no answer at all (the app failed, or the client left first)
