"""Web UI: sign-in (password, TOTP, email link, OpenID Connect), sign-out, set-up, invitations.

Owns: the sign-in pages and where each login step leads.
Trusts: auth for every credential decision; the OIDC state only from its HttpOnly cookie.
Never: redirects anywhere but a local path after sign-in; reveals whether an email has an account.
"""

from __future__ import annotations

from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from grainhouse_common.errors import from_rpc_error
from grainhouse_frontend.page_base import UiBase, safe_next
from grainhouse_frontend.web_session import client_info
from grainhouse_proto import auth_pb2


class SignInPages(UiBase):
    # -- sign in ------------------------------------------------------------------------------

    def _signed_in(self, secret: str, next_path: str) -> RedirectResponse:
        response = RedirectResponse(safe_next(next_path), status_code=303)
        self.d.sessions.set_session(response, secret)
        return response

    async def _login_result(
        self, request: Request, result: auth_pb2.LoginResult, next_path: str
    ) -> Response:
        if result.WhichOneof("outcome") == "second_factor":
            return self.render(
                request,
                "totp.html",
                None,
                challenge=result.second_factor.challenge_secret,
                next=safe_next(next_path),
                title="Two-factor code",
            )
        return self._signed_in(result.session.session_secret, next_path)

    async def login(self, request: Request) -> Response:
        next_path = safe_next(request.query_params.get("next", "/"))
        if request.method == "GET":
            if await self.d.sessions.user(request, touch=False) is not None:
                return RedirectResponse(next_path, status_code=303)
            return self.render(
                request,
                "login.html",
                None,
                next=next_path,
                title="Sign in",
                oidc_providers=self.d.oidc_providers,
            )
        form = await self.post_form(request, None)
        next_path = safe_next(form.get("next", "/"))
        try:
            result = await self.d.auth.LoginPassword(
                auth_pb2.LoginPasswordRequest(
                    email=form.get("email", ""),
                    password=form.get("password", ""),
                    client=client_info(request),
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            text = (
                "Too many attempts; wait a little and try again."
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                else "That email and password do not match."
            )
            return self.render(
                request,
                "login.html",
                None,
                401,
                next=next_path,
                error=text,
                email=form.get("email", ""),
                title="Sign in",
                oidc_providers=self.d.oidc_providers,
            )
        return await self._login_result(request, result, next_path)

    async def login_totp(self, request: Request) -> Response:
        form = await self.post_form(request, None)
        code = form.get("code", "").replace(" ", "")
        req = auth_pb2.VerifyTotpRequest(
            challenge_secret=form.get("challenge", ""), client=client_info(request)
        )
        if code.isdigit() and len(code) == 6:
            req.totp_code = code
        else:
            req.recovery_code = form.get("code", "").strip()
        try:
            result = await self.d.auth.VerifyTotp(req, timeout=10)
        except grpc.aio.AioRpcError:
            return self.render(
                request,
                "totp.html",
                None,
                401,
                challenge=form.get("challenge", ""),
                next=safe_next(form.get("next", "/")),
                error="That code is not right.",
            )
        return await self._login_result(request, result, form.get("next", "/"))

    async def login_email(self, request: Request) -> Response:
        if request.method == "GET":
            code = request.query_params.get("code", "")
            # A button, not an automatic login: mail scanners that follow links must not
            # consume the single-use code.
            return self.message(
                request,
                None,
                "Sign in",
                "Continue to sign in to Grainhouse.",
                form_action="/login/email",
                form_fields={"code": code},
                form_button="Sign in",
            )
        form = await self.post_form(request, None)
        if form.get("code"):
            try:
                result = await self.d.auth.FinishEmailLogin(
                    auth_pb2.FinishEmailLoginRequest(
                        code=form["code"], client=client_info(request)
                    ),
                    timeout=10,
                )
            except grpc.aio.AioRpcError:
                return self.message(
                    request,
                    None,
                    "Link expired",
                    "This sign-in link is used or expired.",
                    401,
                    link="/login",
                    link_text="Back to sign in",
                )
            return await self._login_result(request, result, "/")
        try:
            await self.d.auth.StartEmailLogin(
                auth_pb2.StartEmailLoginRequest(
                    email=form.get("email", ""),
                    link_base_url=self.d.public_url + "/login/email",
                    client=client_info(request),
                ),
                timeout=15,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, None, exc)
        return RedirectResponse("/login?done=mail", status_code=303)

    async def oidc_start(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        try:
            reply = await self.d.auth.StartOidcLogin(
                auth_pb2.StartOidcLoginRequest(
                    provider=provider,
                    redirect_uri=self._oidc_redirect(provider),
                    # From an invitation page: auth creates the account on finish.
                    invitation_secret=request.query_params.get("invite", "")[:200],
                ),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, None, exc)
        response = RedirectResponse(reply.authorization_url, status_code=303)
        response.set_cookie(
            self.d.sessions.names.oidc_state,
            reply.state_secret,
            max_age=600,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.d.sessions.names.secure,
        )
        return response

    def _oidc_redirect(self, provider: str) -> str:
        return f"{self.d.public_url}/login/oidc/{provider}/callback"

    async def oidc_finish(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        try:
            result = await self.d.auth.FinishOidcLogin(
                auth_pb2.FinishOidcLoginRequest(
                    provider=provider,
                    state_secret=request.cookies.get(self.d.sessions.names.oidc_state, ""),
                    callback_state_secret=request.query_params.get("state", ""),
                    code=request.query_params.get("code", ""),
                    redirect_uri=self._oidc_redirect(provider),
                    client=client_info(request),
                ),
                timeout=20,
            )
        except grpc.aio.AioRpcError as exc:
            return self.fail(request, None, exc)
        response = await self._login_result(request, result, "/")
        response.delete_cookie(self.d.sessions.names.oidc_state, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        user = await self.d.sessions.user(request, touch=False)
        if user is not None:
            await self.post_form(request, user)
            await self.d.auth.Logout(
                auth_pb2.LogoutRequest(session_secret=user.session_secret), timeout=5
            )
        response = RedirectResponse("/login", status_code=303)
        self.d.sessions.clear_session(response)
        return response

    async def _signup(self, request: Request, kind: str) -> Response:
        secret = request.path_params["secret"]
        heading = "Set up Grainhouse" if kind == "setup" else "Create your account"
        intro = (
            "Create the first administrator account of this server."
            if kind == "setup"
            else "You were invited to this Grainhouse server."
        )
        ctx: dict[str, Any] = {"heading": heading, "intro": intro, "action": f"/{kind}/{secret}",
               "button": "Create account", "title": heading,
               "oidc_providers": self.d.oidc_providers if kind == "invite" else [],
               "invite_secret": secret}  # fmt: skip
        if request.method == "GET":
            return self.render(request, "signup.html", None, form={}, **ctx)
        form = await self.post_form(request, None)
        details = auth_pb2.NewAccountDetails(
            email=form.get("email", ""),
            display_name=form.get("display_name", ""),
            password=form.get("password", ""),
        )
        req = auth_pb2.CreateAccountRequest(details=details, client=client_info(request))
        if kind == "setup":
            req.setup_link_secret = secret
        else:
            req.invitation_secret = secret
        try:
            result = await self.d.auth.CreateAccount(req, timeout=10)
        except grpc.aio.AioRpcError as exc:
            text = from_rpc_error(exc).public_message
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                text = "This link is used or expired."
            return self.render(request, "signup.html", None, 400, form=form, error=text, **ctx)
        return await self._login_result(request, result, "/")

    async def setup(self, request: Request) -> Response:
        return await self._signup(request, "setup")

    async def invite(self, request: Request) -> Response:
        return await self._signup(request, "invite")
