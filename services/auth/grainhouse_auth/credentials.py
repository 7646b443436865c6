"""Secrets handed to clients: how they are made, stored (as hashes) and checked.

Owns: the secret formats (`ghs_` session, `ghp_` API token, `ghl_` share link, `ghg_` grain API
token, `ghx_` one-time tickets) and their stored form.
Trusts: `secrets` for randomness.
Never: stores, logs or compares a secret other than through its SHA-256 in constant time.

Every secret is 256 random bits, so a plain SHA-256 is the right stored form (argon2 is for
low-entropy passwords): lookups are by hash, then a constant-time comparison guards against any
index-timing side channel.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION = "ghs_"
API_TOKEN = "ghp_"  # noqa: S105 - a public prefix, not a secret
SHARE_LINK = "ghl_"
GRAIN_TOKEN = "ghg_"  # noqa: S105 - a public prefix, not a secret
TICKET = "ghx_"
MAX_LEN = 200  # longer input is refused before hashing: no secret of ours is that long


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_id(prefix: str) -> str:
    """A public, loggable id ("ses_…", "grt_…")."""
    return prefix + secrets.token_hex(12)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def plausible(secret: str, prefix: str) -> bool:
    return secret.startswith(prefix) and len(secret) <= MAX_LEN


def same(stored: bytes, offered: bytes) -> bool:
    return hmac.compare_digest(bytes(stored), offered)


def hint(secret: str) -> str:
    """The first characters, so a person can recognise a token in a list. Not secret."""
    return secret[:8]
