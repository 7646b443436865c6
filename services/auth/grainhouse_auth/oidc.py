"""OpenID Connect logins: the authorization-code flow with PKCE and nonce, against any provider.

Owns: the provider list (from settings), a short cache of each provider's discovery document and
keys, and the `oidc` credentials that link an account to (provider, subject).
Trusts: a provider only through what it signs: the ID token's signature (keys from its
discovery document, fetched over the network with a timeout), issuer, audience, nonce and expiry.
Never: trusts the callback's parameters on their own (state must equal the browser-bound state);
links an existing account by email (that would let a provider take over accounts); logs a code,
a token or a client secret.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from grainhouse_auth.store import Conn, one, run
from grainhouse_common.errors import GrainhouseError, Kind

_CACHE_SECONDS = 300
_LEEWAY = 60  # seconds of clock skew tolerated on exp / iat
_ALGORITHMS = ["RS256", "ES256", "PS256", "EdDSA"]


@dataclass(frozen=True)
class Provider:
    name: str
    issuer: str
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    scopes: str = "openid email profile"


def parse_providers(raw: str) -> dict[str, Provider]:
    """Providers from the JSON setting; ValueError with a message that holds no secret."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        out = {}
        for name, p in data.items():
            out[name] = Provider(
                name=name,
                issuer=str(p["issuer"]).rstrip("/"),
                client_id=str(p["client_id"]),
                client_secret=str(p["client_secret"]),
                redirect_uris=tuple(str(u) for u in p["redirect_uris"]),
                scopes=str(p.get("scopes", "openid email profile")),
            )
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            "GRAINHOUSE_AUTH_OIDC_PROVIDERS: expected a JSON object "
            '{"<name>": {"issuer", "client_id", "client_secret", "redirect_uris": [...]}}'
        ) from None


class Oidc:
    def __init__(self, providers: dict[str, Provider], timeout: float = 10.0) -> None:
        self.providers = providers
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._meta: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, tuple[float, KeySet]] = {}

    def provider(self, name: str) -> Provider:
        found = self.providers.get(name)
        if found is None:
            raise GrainhouseError(Kind.NOT_FOUND, "unknown login provider")
        return found

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as http,
                http.get(url) as resp,
            ):
                if resp.status != 200:
                    raise GrainhouseError(Kind.UNAVAILABLE, "login provider unavailable")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise GrainhouseError(Kind.UNAVAILABLE, "login provider unavailable") from exc
        if not isinstance(body, dict):
            raise GrainhouseError(Kind.UNAVAILABLE, "login provider answered nonsense")
        return body

    async def metadata(self, p: Provider) -> dict[str, Any]:
        cached = self._meta.get(p.name)
        if cached and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        meta = await self._get_json(p.issuer + "/.well-known/openid-configuration")
        if str(meta.get("issuer", "")).rstrip("/") != p.issuer:
            raise GrainhouseError(Kind.UNAVAILABLE, "login provider names another issuer")
        self._meta[p.name] = (time.monotonic(), meta)
        return meta

    async def _keyset(self, p: Provider, refresh: bool = False) -> KeySet:
        cached = self._keys.get(p.name)
        if cached and not refresh and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        meta = await self.metadata(p)
        try:
            # The provider's JSON, unchecked: import_key_set checks it (its errors are caught).
            jwks = cast(KeySetSerialization, await self._get_json(str(meta["jwks_uri"])))
            keys = KeySet.import_key_set(jwks)
        except (KeyError, JoseError, ValueError) as exc:
            raise GrainhouseError(Kind.UNAVAILABLE, "login provider keys unusable") from exc
        self._keys[p.name] = (time.monotonic(), keys)
        return keys

    async def start(
        self, p: Provider, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        """The provider's authorization URL for this login."""
        if redirect_uri not in p.redirect_uris:
            raise GrainhouseError(Kind.INVALID, "redirect_uri: not registered for this provider")
        meta = await self.metadata(p)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": p.client_id,
                "redirect_uri": redirect_uri,
                "scope": p.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{meta['authorization_endpoint']}?{query}"

    async def finish(
        self, p: Provider, code: str, redirect_uri: str, verifier: str, nonce: str
    ) -> dict[str, Any]:
        """Redeem the code and return the checked ID token's claims."""
        meta = await self.metadata(p)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": p.client_id,
            "client_secret": p.client_secret,
            "code_verifier": verifier,
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as http,
                http.post(str(meta["token_endpoint"]), data=form) as resp,
            ):
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise GrainhouseError(Kind.UNAVAILABLE, "login provider unavailable") from exc
        if status != 200 or not isinstance(body, dict) or "id_token" not in body:
            raise GrainhouseError(Kind.UNAUTHENTICATED, "the login provider refused the code")
        return await self._check_id_token(p, str(body["id_token"]), nonce)

    async def _check_id_token(self, p: Provider, id_token: str, nonce: str) -> dict[str, Any]:
        refused = GrainhouseError(Kind.UNAUTHENTICATED, "the login provider's answer is invalid")
        for refresh in (False, True):  # a provider may have rotated its keys since we cached
            try:
                token = jwt.decode(id_token, await self._keyset(p, refresh), algorithms=_ALGORITHMS)
                break
            except JoseError:
                if refresh:
                    raise refused from None
        registry = jwt.JWTClaimsRegistry(
            leeway=_LEEWAY,
            iss={"essential": True, "value": p.issuer},
            aud={"essential": True, "value": p.client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError:
            raise refused from None
        return dict(token.claims)


def subject_key(provider: str, subject: str) -> str:
    return f"{provider}\n{subject}"


async def account_for(conn: Conn, provider: str, subject: str) -> str | None:
    row = await one(
        conn,
        "SELECT account_id FROM credentials WHERE kind = 'oidc' AND secret = %s",
        (subject_key(provider, subject),),
    )
    return None if row is None else str(row["account_id"])


async def link(conn: Conn, account_id: str, provider: str, subject: str) -> None:
    # One `oidc` row per account (the table's key): linking a second provider replaces it.
    await run(
        conn,
        "INSERT INTO credentials (account_id, kind, secret) VALUES (%s, 'oidc', %s)"
        " ON CONFLICT (account_id, kind) DO UPDATE SET secret = EXCLUDED.secret",
        (account_id, subject_key(provider, subject)),
    )


async def has_link(conn: Conn, account_id: str) -> bool:
    row = await one(
        conn, "SELECT 1 FROM credentials WHERE account_id = %s AND kind = 'oidc'", (account_id,)
    )
    return row is not None
