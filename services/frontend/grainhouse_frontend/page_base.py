"""What every web UI page shares: rendering, sign-in checks, CSRF-checked forms, error pages.

Owns: the page headers (strict CSP, no-store), the template environment, how a failure becomes
a page.
Trusts: `Sessions` for who is signed in.
Never: renders untrusted text unescaped (autoescape is on everywhere).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from grainhouse_common.errors import GrainhouseError, Kind, from_rpc_error
from grainhouse_frontend.origins import Origins
from grainhouse_frontend.web_session import Sessions, WebUser, read_form
from grainhouse_proto import auth_pb2, auth_pb2_grpc, grainmgr_pb2, grainmgr_pb2_grpc

HERE = Path(__file__).resolve().parent
MAX_PACKAGE_BYTES = 512 * 1024 * 1024
CHUNK = 1024 * 1024
NOTICES = {
    "installed": "The app is installed.",
    "uninstalled": "The app was uninstalled.",
    "trashed": "The grain is in the trash. You can restore it from there.",
    "restored": "The grain is back.",
    "deleted": "The grain was deleted.",
    "password": "Your password was changed. Other sessions were signed out.",
    "totp-off": "Two-factor sign-in is off.",
    "revoked": "Revoked.",
    "restarted": "The grain restarted.",
    "mail": "If that address has an account, a sign-in link is on its way.",
}
SCOPES = {"read": auth_pb2.SCOPE_READ, "write": auth_pb2.SCOPE_WRITE, "admin": auth_pb2.SCOPE_ADMIN}
SCOPE_NAMES = {v: k for k, v in SCOPES.items()}
STATE_NAMES = {
    v: grainmgr_pb2.GrainState.Name(v).removeprefix("GRAIN_STATE_").lower()
    for v in grainmgr_pb2.GrainState.values()
}


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def when(ts: Any) -> str:
    if ts is None or not ts.seconds:
        return "never"
    return str(ts.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def safe_next(value: str) -> str:
    # Only local paths: an open redirect after login would be a phishing tool.
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@dataclass
class UiDeps:
    auth: auth_pb2_grpc.AuthStub
    grainmgr: grainmgr_pb2_grpc.GrainManagerStub
    sessions: Sessions
    origins: Origins
    public_url: str
    wildcard_host: str
    oidc_providers: list[str]
    peers: dict[str, str]
    backup: Any = None  # backup_pb2_grpc.BackupStub (backup pages)


class UiBase:
    def __init__(self, deps: UiDeps) -> None:
        self.d = deps
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
        )
        scheme = deps.public_url.split("://", 1)[0]
        frames = f"{scheme}://{deps.wildcard_host}"
        self.csp = (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data:; frame-src {frames}; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'; object-src 'none'"
        )

    # -- rendering ------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, user: WebUser | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        csrf, fresh = self.d.sessions.csrf_token(request, user)
        done = request.query_params.get("done", "")
        ctx.setdefault("notice", NOTICES.get(done, ""))
        ctx.setdefault("error", "")
        ctx.setdefault("title", "")
        ctx.setdefault("section", "")
        html = self.env.get_template(name).render(user=user, csrf=csrf, **ctx)
        response = HTMLResponse(html, status_code=status, headers=self.headers())
        if fresh:
            self.d.sessions.set_csrf_cookie(response, fresh)
        return response

    def headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": self.csp,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }

    def message(
        self,
        request: Request,
        user: WebUser | None,
        heading: str,
        text: str,
        status: int = 200,
        **ctx: Any,
    ) -> HTMLResponse:
        return self.render(
            request, "message.html", user, status, heading=heading, text=text, title=heading, **ctx
        )

    def to_login(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

    async def need_user(self, request: Request) -> WebUser | Response:
        user = await self.d.sessions.user(request)
        if user is None:
            return self.to_login(request)
        return user

    async def post_form(self, request: Request, user: WebUser | None) -> dict[str, str]:
        form = await read_form(request)
        self.d.sessions.check_csrf(request, user, form.get("csrf", ""))
        return form

    async def form_action(
        self, request: Request, call: Callable[[WebUser], Awaitable[object]], done: str
    ) -> Response:
        """A plain POST form: signed in, CSRF checked, one call, then 303 to `done`."""
        user = await self.need_user(request)
        if not isinstance(user, WebUser):
            return user
        await self.post_form(request, user)
        try:
            await call(user)
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, user, exc)
        return RedirectResponse(done, status_code=303)

    def fail(self, request: Request, user: WebUser | None, exc: Exception) -> HTMLResponse:
        if isinstance(exc, grpc.aio.AioRpcError):
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                err = GrainhouseError(Kind.INTERNAL, "this is not available yet")
                status = 501
            else:
                err = from_rpc_error(exc)
                status = err.http_status
        elif isinstance(exc, GrainhouseError):
            err, status = exc, exc.http_status
        else:
            raise exc
        return self.message(request, user, "Something went wrong", err.public_message, status)
