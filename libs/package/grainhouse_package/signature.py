"""The package header: magic, author public key, Ed25519 signature, payload length.

Owns: the 120-byte header layout and exactly which bytes the signature covers.
Trusts: `keys` for the Ed25519 arithmetic; nothing in the header until it is checked.
Never: accepts a payload whose signature was not checked against the header's own key.

Layout (all integers big-endian)::

    offset  size  field
    0       16    magic b"GRAINHOUSE-APP\\x00\\x01" (the last byte is the format version)
    16      32    Ed25519 public key of the author: the app id is its base32
    48      64    Ed25519 signature of SIGNED_PREFIX + sha256(payload)
    112     8     payload length in bytes
    120     ...   payload: an xz-compressed tar (see archive.py)

The signed message binds a fixed domain prefix so a package signature can never be replayed as
a signature of anything else made with the same key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import keys
from grainhouse_package.errors import PackageError

MAGIC = b"GRAINHOUSE-APP\x00\x01"
SIGNED_PREFIX = b"grainhouse-package-v1\x00"
HEADER_LEN = len(MAGIC) + keys.PUBLIC_KEY_BYTES + keys.SIGNATURE_BYTES + 8
_UNSIGNED = bytes(keys.SIGNATURE_BYTES)


@dataclass(frozen=True)
class Header:
    """A parsed (not yet verified) package header."""

    public_key: bytes
    signature: bytes
    payload_len: int

    @property
    def app_id(self) -> str:
        return keys.app_id_from_public_key(self.public_key)


def signed_message(payload_sha256: bytes) -> bytes:
    """Exactly the bytes the author signs."""
    return SIGNED_PREFIX + payload_sha256


def encode_header(key: Ed25519PrivateKey, payload_sha256: bytes, payload_len: int) -> bytes:
    """A signed header for a payload with this digest and length."""
    signature = keys.sign(key, signed_message(payload_sha256))
    return MAGIC + keys.public_key_bytes(key) + signature + struct.pack(">Q", payload_len)


def read_header(f: IO[bytes]) -> Header:
    """Read and parse the header at the current position; refuses non-packages."""
    data = f.read(HEADER_LEN)
    if len(data) < len(MAGIC) or data[: len(MAGIC) - 1] != MAGIC[:-1]:
        raise PackageError("invalid", "not a grainhouse package (bad magic bytes)")
    if data[len(MAGIC) - 1] != MAGIC[-1]:
        raise PackageError("invalid", f"unsupported package format version {data[len(MAGIC) - 1]}")
    if len(data) < HEADER_LEN:
        raise PackageError("invalid", "truncated package: the header is incomplete")
    at = len(MAGIC)
    public_key = data[at : at + keys.PUBLIC_KEY_BYTES]
    at += keys.PUBLIC_KEY_BYTES
    signature = data[at : at + keys.SIGNATURE_BYTES]
    at += keys.SIGNATURE_BYTES
    (payload_len,) = struct.unpack(">Q", data[at : at + 8])
    if signature == _UNSIGNED:
        raise PackageError("invalid", "package is not signed (missing signature)")
    return Header(public_key=public_key, signature=signature, payload_len=payload_len)


def check_signature(header: Header, payload_sha256: bytes) -> None:
    """Raise unless the header's signature over this payload digest is by the header's key."""
    if not keys.signature_is_valid(
        header.public_key, header.signature, signed_message(payload_sha256)
    ):
        raise PackageError(
            "invalid",
            f"bad signature: the package is not signed by the key of app id {header.app_id} "
            "(signed by another key, or altered after signing)",
        )
