"""Passwords: the strength policy, argon2id hashing, and checks of equal cost for strangers.

Owns: the password policy (length, the bundled list of common passwords) and the hash format.
Trusts: argon2-cffi's defaults (RFC 9106 low-memory profile) for the cost parameters.
Never: logs, stores or returns a password; only its argon2id hash leaves this module.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from grainhouse_common.errors import GrainhouseError, Kind

MIN_LENGTH = 12
MAX_LENGTH = 256  # argon2 accepts more, but nobody types that much; it bounds the work
_hasher = PasswordHasher()
# Checked for unknown emails so a login takes the same time whether the account exists or not.
_DUMMY_HASH = _hasher.hash("grainhouse-dummy-password-for-timing")
_TRAILER = re.compile(r"[\d\W_]+$")


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("grainhouse_auth").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def weakness(password: str) -> str | None:
    """Why a password is refused, as a message to show, or None if it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"password: at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"password: at most {MAX_LENGTH} characters"
    lowered = password.lower()
    common = common_passwords()
    # A common word with digits or symbols stuck on the end ("password123456") is as weak.
    base = _TRAILER.sub("", lowered)
    if lowered in common or (base and base in common):
        return "password: too common, choose another"
    if len(set(lowered)) <= 3:
        return "password: too repetitive, choose another"
    return None


def check_policy(password: str) -> None:
    reason = weakness(password)
    if reason is not None:
        raise GrainhouseError(Kind.INVALID, reason)


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


def verify(stored_hash: str | None, password: str) -> bool:
    """True if `password` matches; checks a dummy hash when there is none (same cost)."""
    if len(password) > MAX_LENGTH:
        stored_hash, password = None, password[:MAX_LENGTH]  # bounded work, never a match
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
