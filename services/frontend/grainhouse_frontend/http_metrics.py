"""HTTP request metrics for the frontend, labelled by route template (never a raw path).

Owns: `grainhouse_frontend_http_requests_total` and
`grainhouse_frontend_http_request_duration_seconds`.
Trusts: Starlette's router to say which route template matched.
Never: labels with a raw path, query, grain id, user id or token.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grainhouse_common.metrics import LATENCY_BUCKETS

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
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(self.router, scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            SECONDS.labels(route=route).observe(time.perf_counter() - start)
