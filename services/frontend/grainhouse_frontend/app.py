"""The frontend's HTTP application: routes of the public listener.

Owns: the Starlette app (health now; web UI, REST API and grain traffic arrive with their
issues).
Trusts: auth's answers for who a caller is (nothing from the browser).
Never: reads credential data, opens grain files or creates sandboxes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from grainhouse_frontend.http_metrics import HttpMetrics


def build(health: Callable[[], Awaitable[dict[str, bool]]]) -> ASGIApp:
    async def healthz(request: Request) -> JSONResponse:
        checks = await health()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    app = Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])
    return HttpMetrics(app, app.router)
