"""The frontend's HTTP application: routes of the public listener.

Owns: the Starlette app: health, the REST API (/api/v1); the web UI and grain traffic
arrive with their issues.
Trusts: auth's answers for who a caller is (nothing from the browser).
Never: reads credential data, opens grain files or creates sandboxes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from grainhouse_frontend import api as apimod
from grainhouse_frontend import problem
from grainhouse_frontend.http_metrics import HttpMetrics


def build(
    health: Callable[[], Awaitable[dict[str, bool]]], deps: apimod.Deps | None = None
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

    routes = [Route("/healthz", healthz, methods=["GET"])]
    if deps is not None:
        api_routes, _ = apimod.build_routes(deps)
        routes += api_routes
    routes.append(Route("/api/{rest:path}", api_not_found))
    app = Starlette(routes=routes, exception_handlers=problem.HANDLERS)  # type: ignore[arg-type]
    return HttpMetrics(app, app.router)
