"""A package file as a whole: check its header and signature, then read its payload.

Owns: `verify_package` and the two-pass read (hash + signature first, decompress second).
Trusts: `signature` for the header, `archive` for the payload, `Caps` for the limits.
Never: decompresses a byte before the signature over the whole payload has been checked;
writes anywhere (non-seekable streams are spooled to an anonymous temporary file).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from grainhouse_package import archive, signature
from grainhouse_package.archive import EntrySink, PayloadSummary
from grainhouse_package.caps import Caps
from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import Manifest

Source = str | os.PathLike[str] | IO[bytes]
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose signature, manifest and every entry passed all checks."""

    app_id: str
    package_id: str
    manifest: Manifest
    entries: int
    unpacked_bytes: int


@dataclass(frozen=True)
class CheckedHeader:
    """Result of the first pass: the header is authentic for this payload."""

    header: signature.Header
    package_id: str
    payload_sha256: bytes


def verify_package(source: Source, caps: Caps = Caps()) -> VerifiedPackage:  # noqa: B008
    """Check signature, manifest and every entry of a package; keep nothing.

    `source` is a path or a binary stream (read from its current position to its end).
    Raises PackageError naming the first problem found.
    """
    with open_source(source, caps) as f:
        checked = check_header(f, caps)
        summary = read_checked_payload(f, checked, caps, archive.DiscardSink())
    return VerifiedPackage(
        app_id=checked.header.app_id,
        package_id=checked.package_id,
        manifest=summary.manifest,
        entries=summary.entries,
        unpacked_bytes=summary.unpacked_bytes,
    )


@contextmanager
def open_source(source: Source, caps: Caps) -> Iterator[IO[bytes]]:
    """A seekable binary file positioned at the package's first byte."""
    if isinstance(source, str | os.PathLike):
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError as exc:
            raise PackageError("not_found", f"package file {source} does not exist") from exc
        except OSError as exc:
            raise PackageError("invalid", f"cannot read package {source}: {exc.strerror}") from exc
        with f:
            yield f
        return
    if source.seekable():
        yield source
        return
    # A pipe or socket: spool it (capped) so it can be read twice.
    with tempfile.TemporaryFile() as spool:
        copied = 0
        while chunk := source.read(_CHUNK):
            copied += len(chunk)
            if copied > caps.max_package_bytes:
                raise PackageError(
                    "too_large", f"package is larger than the cap of {caps.max_package_bytes} bytes"
                )
            spool.write(chunk)
        spool.seek(0)
        yield spool


def check_header(f: IO[bytes], caps: Caps) -> CheckedHeader:
    """Pass one: parse the header, hash the raw payload, verify the signature."""
    start = f.tell()
    header = signature.read_header(f)
    total = signature.HEADER_LEN + header.payload_len
    if total > caps.max_package_bytes:
        raise PackageError(
            "too_large",
            f"package is {total} bytes; the cap is {caps.max_package_bytes}",
        )
    whole = hashlib.sha256()
    f.seek(start)
    whole.update(f.read(signature.HEADER_LEN))
    payload = archive.new_digest()
    left = header.payload_len
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            got = header.payload_len - left
            raise PackageError(
                "invalid",
                f"truncated package: header promises {header.payload_len} payload bytes, "
                f"found {got}",
            )
        left -= len(chunk)
        whole.update(chunk)
        payload.update(chunk)
    if f.read(1):
        raise PackageError("invalid", "corrupt package: data after the end of the payload")
    digest = payload.digest()
    signature.check_signature(header, digest)
    # The package id is the plain sha256 of the file, so `sha256sum FILE` shows it too.
    f.seek(start + signature.HEADER_LEN)
    return CheckedHeader(header=header, package_id=whole.hexdigest(), payload_sha256=digest)


def read_checked_payload(
    f: IO[bytes], checked: CheckedHeader, caps: Caps, sink: EntrySink
) -> PayloadSummary:
    """Pass two: decompress and validate every entry, re-hashing to catch a file swapped
    between the passes."""
    digest = archive.new_digest()
    summary = archive.read_payload(f, checked.header.payload_len, caps, sink, digest)
    if digest.digest() != checked.payload_sha256:
        raise PackageError("invalid", "package changed while it was being read")
    return summary
