"""Packing an author's directory into a signed package file.

Owns: the order of packing (manifest check, payload, header) and the atomic write of FILE.
Trusts: the author's key; the directory only after `archive.write_payload` checked it.
Never: leaves a partial package at the output path; packs what verify would refuse.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import archive, signature
from grainhouse_package.caps import Caps
from grainhouse_package.errors import PackageError
from grainhouse_package.manifest import parse_manifest, to_json
from grainhouse_package.package import VerifiedPackage, verify_package

MANIFEST_FILE = archive.MANIFEST_NAME


def pack_directory(
    source_dir: Path,
    output: Path,
    key: Ed25519PrivateKey,
    caps: Caps = Caps(),  # noqa: B008
    level: int = archive.DEFAULT_LEVEL,
) -> VerifiedPackage:
    """Pack `source_dir` (with its grainhouse.json) into `output`, signed with `key`.

    The package is verified with `caps` before it is moved into place, so a package that
    `pack_directory` returns is one that `verify_package` accepts. `level` is the xz preset
    (0-9): lower is faster, higher is smaller; it does not change what is packed.
    """
    if not 0 <= level <= 9:
        raise PackageError("invalid", f"compression level {level} is not between 0 and 9")
    if not source_dir.is_dir():
        raise PackageError("not_found", f"{source_dir} is not a directory")
    manifest_path = source_dir / MANIFEST_FILE
    try:
        raw_manifest = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise PackageError("invalid", f"{manifest_path} is missing") from exc
    manifest = parse_manifest(raw_manifest, caps.max_manifest_bytes)
    canonical = to_json(manifest)
    out_dir = output.resolve().parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as f:
            f.write(bytes(signature.HEADER_LEN))
            archive.write_payload(canonical, source_dir, f, level)
            payload_len = f.tell() - signature.HEADER_LEN
            f.seek(signature.HEADER_LEN)
            digest = hashlib.sha256()
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
            f.seek(0)
            f.write(signature.encode_header(key, digest.digest(), payload_len))
            f.flush()
            os.fsync(f.fileno())
        verified = verify_package(tmp, caps)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return verified
