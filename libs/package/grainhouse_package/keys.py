"""Ed25519 author keys: generate, save, load, and the app id derived from a public key.

Owns: the on-disk key file format (PKCS#8 PEM, mode 0600) and the app id encoding.
Trusts: the `cryptography` library for all key arithmetic.
Never: prints or logs private key material; writes a key file readable by group or others.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from grainhouse_package.errors import PackageError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: 32 key bytes in base32 without padding are always 52 characters.
APP_ID_CHARS = 52


def generate_key() -> Ed25519PrivateKey:
    """A fresh author key; whoever holds it can publish upgrades of the app."""
    return Ed25519PrivateKey.generate()


def save_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write `key` to a new file at `path` with mode 0600; never overwrites an existing file."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: losing an old key by overwriting it would orphan every app signed with it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as exc:
        raise PackageError("conflict", f"key file {path} already exists; not overwriting") from exc
    except OSError as exc:
        raise PackageError("internal", f"cannot create key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def load_key(path: Path) -> Ed25519PrivateKey:
    """Read an author key written by `save_key`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise PackageError("not_found", f"key file {path} does not exist") from exc
    except OSError as exc:
        raise PackageError("internal", f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PackageError("invalid", f"key file {path} is not an unencrypted PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError("invalid", f"key file {path} does not hold an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key, as stored in a package header."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def app_id_from_public_key(raw: bytes) -> str:
    """The app id: lowercase RFC 4648 base32 of the raw public key, without padding."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise PackageError("invalid", f"public key must be {PUBLIC_KEY_BYTES} bytes")
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def public_key_from_app_id(app_id: str) -> bytes:
    """Inverse of `app_id_from_public_key`; refuses anything that is not a well-formed app id."""
    if len(app_id) != APP_ID_CHARS or not app_id.isascii() or app_id != app_id.lower():
        raise PackageError("invalid", f"not an app id: {app_id[:80]!r}")
    try:
        return base64.b32decode(app_id.upper() + "====")
    except ValueError as exc:
        raise PackageError("invalid", f"not an app id: {app_id!r}") from exc


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """An Ed25519 signature of `message`."""
    return key.sign(message)


def signature_is_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` over `message` was made by the key `public_key`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
