"""A small, real OpenID Connect provider for tests, built on Authlib's server side.

Run as its own process: `python oidc_provider.py CONFIG_JSON`. It serves discovery, JWKS, an
authorization endpoint that approves the configured user at once (the test is "the browser"),
and a token endpoint that checks client secret, redirect URI, PKCE and issues signed ID tokens.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, ClassVar

os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http on 127.0.0.1 in tests only

import uvicorn
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, JsonRequest
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONFIG: dict[str, Any] = json.loads(sys.argv[1])
ISSUER = CONFIG["issuer"]
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    redirect_uris: list[str]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str
    user: dict[str, Any]
    code_challenge: str
    code_challenge_method: str
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None

    def get_code_challenge(self) -> str:
        return self.code_challenge

    def get_code_challenge_method(self) -> str:
        return self.code_challenge_method


CLIENT = Client(CONFIG["client_id"], CONFIG["client_secret"], CONFIG["redirect_uris"])
CODES: dict[str, Code] = {}
STATE: dict[str, Any] = {"user": CONFIG["user"]}


class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_post", "client_secret_basic"]

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        CODES[code] = Code(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=data.get("redirect_uri", ""),
            scope=data.get("scope", ""),
            nonce=data.get("nonce", ""),
            user=dict(request.user),
            code_challenge=data.get("code_challenge", ""),
            code_challenge_method=data.get("code_challenge_method", ""),
        )

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        found = CODES.get(code)
        return found if found and found.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
        return authorization_code.user


class IdToken(OpenIDCode):  # type: ignore[misc]
    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return any(c.nonce == nonce for c in CODES.values())

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return KEY

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "kid": "k1"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": ISSUER, "aud": [client.get_client_id()]}

    def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
        return UserInfo(user)


class Payload(BasicOAuth2Payload):  # type: ignore[misc]
    pass


class StarletteRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, url: str, headers: dict[str, str], params: dict[str, str]):
        super().__init__(method=method, uri=url, headers=headers)
        self.payload = Payload(params)
        self._params = params

    @property
    def args(self) -> dict[str, str]:
        return self._params

    @property
    def form(self) -> dict[str, str]:
        return self._params


class Server(AuthorizationServer):  # type: ignore[misc]
    def query_client(self, client_id: str) -> Client | None:
        return CLIENT if client_id == CLIENT.client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        return None

    def create_oauth2_request(self, request: StarletteRequest) -> StarletteRequest:
        return request

    def create_json_request(self, request: StarletteRequest) -> JsonRequest:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        if isinstance(body, dict):
            return JSONResponse(body, status_code=status, headers=dict(headers))
        return Response(body or "", status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None


SERVER = Server()
SERVER.register_token_generator(
    "default", BearerTokenGenerator(lambda **_kw: secrets.token_urlsafe(32))
)
SERVER.register_grant(CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)])


async def discovery(request: Request) -> Response:
    return JSONResponse(
        {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/authorize",
            "token_endpoint": ISSUER + "/token",
            "jwks_uri": ISSUER + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }
    )


async def jwks(request: Request) -> Response:
    return JSONResponse({"keys": [KEY.as_dict(private=False)]})


async def authorize(request: Request) -> Response:
    req = StarletteRequest(
        "GET", str(request.url), dict(request.headers), dict(request.query_params)
    )
    return SERVER.create_authorization_response(req, grant_user=STATE["user"])  # type: ignore[no-any-return]


async def token(request: Request) -> Response:
    # Parsed by hand: Starlette's form parser needs python-multipart, which we do not need.
    form = dict(urllib.parse.parse_qsl((await request.body()).decode()))
    req = StarletteRequest("POST", str(request.url), dict(request.headers), form)
    return SERVER.create_token_response(req)  # type: ignore[no-any-return]


async def set_user(request: Request) -> Response:
    STATE["user"] = await request.json()  # the test picks who "logs in" next
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/.well-known/openid-configuration", discovery),
        Route("/jwks", jwks),
        Route("/authorize", authorize),
        Route("/token", token, methods=["POST"]),
        Route("/test/user", set_user, methods=["POST"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(CONFIG["port"]), log_level="warning")
