"""Browser sessions of the platform origin: the session cookie, auth's view of it, and CSRF.

Owns: the names and attributes of the platform's cookies; the CSRF rule of every form.
Trusts: auth.GetSession for who a cookie belongs to; nothing the browser says about itself.
Never: judges or stores a session secret (it goes to auth unchanged, and into the cookie);
sends a platform cookie anywhere but the platform origin.

CSRF, decided here once: every state-changing form carries a `csrf` field.
- Signed in: the token is HMAC-SHA256(session secret, "csrf"), a synchronizer token bound to the
  session that needs no server state (the frontend keeps none) and that a cross-site page cannot
  compute (it cannot read the HttpOnly cookie).
- Not yet signed in (login, setup, invitation): double-submit: a random value in a short-lived
  HttpOnly `csrf` cookie must equal the form field. SameSite=Lax on every cookie is the second wall.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

import grpc
from starlette.requests import Request
from starlette.responses import Response

from grainhouse_common.errors import GrainhouseError, Kind
from grainhouse_frontend.identity import client_address
from grainhouse_proto import auth_pb2, auth_pb2_grpc

MAX_FORM_BYTES = 64 * 1024
SESSION_MAX_AGE = 30 * 24 * 3600  # the cookie outlives nothing: auth ends sessions earlier


@dataclass(frozen=True)
class CookieNames:
    session: str
    csrf: str
    oidc_state: str
    secure: bool

    @classmethod
    def for_url(cls, public_url: str) -> CookieNames:
        # `__Host-` binds a cookie to one origin, but browsers accept it only with Secure.
        secure = public_url.startswith("https://")
        prefix = "__Host-" if secure else ""
        return cls(prefix + "gh_session", prefix + "gh_csrf", prefix + "gh_oidc", secure)

    def all(self) -> set[str]:
        return {self.session, self.csrf, self.oidc_state}


@dataclass(frozen=True)
class WebUser:
    account_id: str
    display_name: str
    email: str
    is_admin: bool
    totp_enabled: bool
    has_password: bool
    session_secret: str  # kept only for the request, to pass on to auth
    # Auth's answer (Account.can_create_grains): false for visitors (no invitation).
    can_create_grains: bool = False

    def credential(self) -> auth_pb2.Credential:
        return auth_pb2.Credential(session_secret=self.session_secret)


def csrf_for_session(session_secret: str) -> str:
    mac = hmac.new(session_secret.encode(), b"grainhouse-csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


class Sessions:
    def __init__(self, auth: auth_pb2_grpc.AuthStub, names: CookieNames) -> None:
        self.auth = auth
        self.names = names

    async def user(self, request: Request, touch: bool = True) -> WebUser | None:
        """The signed-in user of this request, or None (no cookie, or auth says it ended)."""
        secret = request.cookies.get(self.names.session, "")
        if not secret:
            return None
        try:
            reply = await self.auth.GetSession(
                auth_pb2.GetSessionRequest(
                    session_secret=secret, touch=touch, client_address=client_address(request)
                ),
                timeout=5,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise
        a = reply.account
        return WebUser(
            a.account_id,
            a.display_name,
            a.email,
            a.is_admin,
            a.totp_enabled,
            a.has_password,
            secret,
            a.can_create_grains,
        )

    def set_session(self, response: Response, secret: str) -> None:
        response.set_cookie(
            self.names.session,
            secret,
            max_age=SESSION_MAX_AGE,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.names.secure,
        )

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(self.names.session, path="/", secure=self.names.secure)

    # -- CSRF ---------------------------------------------------------------------------------

    def csrf_token(self, request: Request, user: WebUser | None) -> tuple[str, str | None]:
        """The token to put in forms, and a new pre-login cookie value to set (or None)."""
        if user is not None:
            return csrf_for_session(user.session_secret), None
        existing = request.cookies.get(self.names.csrf, "")
        if len(existing) >= 32:
            return existing, None
        fresh = secrets.token_urlsafe(32)
        return fresh, fresh

    def set_csrf_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            self.names.csrf,
            value,
            max_age=3600,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.names.secure,
        )

    def check_csrf(self, request: Request, user: WebUser | None, sent: str) -> None:
        if user is not None:
            expected = csrf_for_session(user.session_secret)
        else:
            expected = request.cookies.get(self.names.csrf, "")
        if not expected or not sent or not hmac.compare_digest(expected, sent):
            raise GrainhouseError(
                Kind.PERMISSION, "the form expired or came from another site; reload and retry"
            )


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (bounded), first value of each field."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise GrainhouseError(Kind.INVALID, "expected a form")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise GrainhouseError(Kind.INVALID, "form too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def client_info(request: Request) -> auth_pb2.ClientInfo:
    return auth_pb2.ClientInfo(
        remote_addr=client_address(request), user_agent=request.headers.get("user-agent", "")[:256]
    )
