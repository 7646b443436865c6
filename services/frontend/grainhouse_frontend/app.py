"""The frontend's HTTP application: which host and path reaches which part.

Owns: the split of the public listener by Host: `ui-<id>.` / `api.` hosts go to the grain
proxy, everything else to the platform (health, REST API /api/v1, web UI, static files).
Trusts: auth's answers for who a caller is (nothing from the browser).
Never: reads credential data, opens grain files or creates sandboxes; lets a grain host reach a
platform route (the platform's cookies and API live on the platform host only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from grainhouse_frontend import api as apimod
from grainhouse_frontend import problem
from grainhouse_frontend.grain_proxy import GrainProxy
from grainhouse_frontend.http_metrics import GrainHttpMetrics, HttpMetrics
from grainhouse_frontend.origins import Origins
from grainhouse_frontend.pages import Ui

# Hosts classified so far (grain hosts repeat for every request of a session); cleared when
# full, so a client sending random hosts costs a little CPU and never memory.
HOST_CACHE_SIZE = 4096


class HostSplit:
    """Route a request by its Host header before any platform code sees it: the outermost
    callable (under uvicorn's proxy-headers middleware), so grain HTTP skips Starlette's
    routing and middleware altogether."""

    def __init__(self, platform: ASGIApp, grains: GrainHttpMetrics, origins: Origins) -> None:
        self.platform = platform
        self.grains = grains
        self.origins = origins
        self._kinds: dict[bytes, tuple[str, str] | None] = {}

    def kind_of(self, host: bytes) -> tuple[str, str] | None:
        """`Origins.host_kind` of a Host header value (None: a platform host), cached."""
        try:
            return self._kinds[host]
        except KeyError:
            if len(self._kinds) >= HOST_CACHE_SIZE:
                self._kinds.clear()
            kind = self._kinds[host] = self.origins.host_kind(host.decode("latin-1"))
            return kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind_of_scope = scope["type"]
        if kind_of_scope == "http" or kind_of_scope == "websocket":
            host = b""
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value
                    break
            kind = self.kind_of(host)
            if kind is not None:
                if kind_of_scope == "http":
                    await self.grains.http(scope, receive, send, host.decode("latin-1"), kind)
                else:
                    await self.grains(scope, receive, send)
                return
        await self.platform(scope, receive, send)


def build(
    health: Callable[[], Awaitable[dict[str, bool]]],
    deps: apimod.Deps | None = None,
    ui: Ui | None = None,
    grains: GrainProxy | None = None,
) -> ASGIApp:
    async def healthz(request: Request) -> JSONResponse:
        checks = await health()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def api_not_found(request: Request) -> Response:
        return problem.problem(404, f"no API route {request.url.path}", "not_found")

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"])]
    if deps is not None:
        api_routes, _ = apimod.build_routes(deps)
        routes += api_routes
    routes.append(Route("/api/{rest:path}", api_not_found))
    if ui is not None:
        routes += ui.routes()
    app = Starlette(routes=routes, exception_handlers=problem.HANDLERS)
    measured = HttpMetrics(app, app.router)
    if grains is None:
        return measured
    # Grain traffic is measured too, with fixed `grain:*` route labels (never the host).
    return HostSplit(measured, GrainHttpMetrics(grains, grains.origins, grains), grains.origins)
