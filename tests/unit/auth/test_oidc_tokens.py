"""ID-token checks of the OIDC client: signature, issuer, audience, nonce, expiry."""

from __future__ import annotations

import time

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from grainhouse_auth import oidc
from grainhouse_common.errors import GrainhouseError, Kind

pytestmark = pytest.mark.unit

PROVIDER = oidc.Provider("corp", "https://id.example", "gh", "s3cr3t", ("https://gh/cb",))
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})


def client() -> oidc.Oidc:
    c = oidc.Oidc({"corp": PROVIDER})
    # Keys as if just fetched from the provider's jwks_uri (no network in unit tests).
    c._keys["corp"] = (time.monotonic(), KeySet([RSAKey.import_key(KEY.as_dict(private=False))]))
    return c


def token(key: RSAKey = KEY, **changes: object) -> str:
    now = int(time.time())
    claims = {"iss": "https://id.example", "aud": "gh", "sub": "u1", "nonce": "n1",
              "iat": now, "exp": now + 300}  # fmt: skip
    claims.update(changes)
    return jwt.encode(
        {"alg": "RS256", "kid": "k1"}, {k: v for k, v in claims.items() if v is not None}, key
    )


async def test_a_good_token_gives_its_claims() -> None:
    claims = await client()._check_id_token(PROVIDER, token(), "n1")
    assert claims["sub"] == "u1"
    listed = await client()._check_id_token(PROVIDER, token(aud=["other", "gh"]), "n1")
    assert listed["sub"] == "u1"


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "https://evil.example"},
        {"aud": "someone-else"},
        {"nonce": "replayed"},
        {"exp": int(time.time()) - 3600},
        {"nonce": None},
        {"sub": None},
    ],
)
async def test_bad_claims_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(GrainhouseError) as err:
        await client()._check_id_token(PROVIDER, token(**changes), "n1")
    assert err.value.kind is Kind.UNAUTHENTICATED


async def test_a_token_signed_by_another_key_is_refused() -> None:
    c = client()
    # Refreshing the keys would need the network: mark the cache fresh and make the refresh
    # fail the way an unreachable provider does.
    c._meta["corp"] = (
        time.monotonic(),
        {"issuer": "https://id.example", "jwks_uri": "http://127.0.0.1:9/jwks"},
    )
    with pytest.raises(GrainhouseError) as err:
        await c._check_id_token(PROVIDER, token(OTHER), "n1")
    assert err.value.kind in (Kind.UNAUTHENTICATED, Kind.UNAVAILABLE)


def test_provider_settings_parse_and_fail_without_showing_secrets() -> None:
    parsed = oidc.parse_providers(
        '{"corp": {"issuer": "https://id.example/", "client_id": "gh",'
        ' "client_secret": "s3cr3t", "redirect_uris": ["https://gh/cb"]}}'
    )
    assert parsed["corp"].issuer == "https://id.example"
    assert oidc.parse_providers("") == {}
    with pytest.raises(ValueError) as err:
        oidc.parse_providers('{"corp": {"client_secret": "s3cr3t"}}')
    assert "s3cr3t" not in str(err.value)
