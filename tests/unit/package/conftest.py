"""Fixtures for package tests: author keys, a minimal app directory, hostile-package crafting."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from grainhouse_package import signature

MANIFEST = {
    "title": "Test App",
    "version": 2,
    "marketing_version": "2.0",
    "actions": [{"noun": "thing", "command": ["/usr/bin/python3", "/opt/app/main.py"]}],
    "continue_command": ["/usr/bin/python3", "/opt/app/main.py"],
    "listen": {"port": 8000},
}


def manifest_bytes(**changes: object) -> bytes:
    doc = dict(MANIFEST)
    doc.update(changes)
    return json.dumps(doc).encode()


@dataclass
class Member:
    """One tar entry to put in a crafted payload."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    declared_size: int | None = None
    pax: dict[str, str] | None = None


def tar_bytes(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.mode = m.mode
            info.linkname = m.linkname
            if m.pax:
                info.pax_headers = dict(m.pax)
            if m.kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    return raw


def standard_members(*extra: Member, manifest: bytes | None = None) -> list[Member]:
    return [
        Member("grainhouse.json", manifest if manifest is not None else manifest_bytes()),
        Member("files", kind=tarfile.DIRTYPE, mode=0o755),
        Member("files/main.py", b"print('hi')\n"),
        *extra,
    ]


def wrap(
    payload: bytes, signer: Ed25519PrivateKey, claimed: Ed25519PrivateKey | None = None
) -> bytes:
    """A package file around `payload`, signed by `signer`, claiming `claimed`'s public key."""
    header = signature.encode_header(signer, hashlib.sha256(payload).digest(), len(payload))
    if claimed is not None:
        from grainhouse_package.keys import public_key_bytes

        start = len(signature.MAGIC)
        header = header[:start] + public_key_bytes(claimed) + header[start + 32 :]
    return header + payload


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def craft(key: Ed25519PrivateKey, tmp_path: Path) -> Callable[..., Path]:
    """craft(members=None, *, payload=None, tar=None, signer=None) -> path of a package file."""
    counter = iter(range(1_000_000))

    def _craft(
        members: list[Member] | None = None,
        *,
        tar: bytes | None = None,
        payload: bytes | None = None,
        signer: Ed25519PrivateKey | None = None,
    ) -> Path:
        if payload is None:
            raw_tar = tar if tar is not None else tar_bytes(members or standard_members())
            payload = lzma.compress(raw_tar, format=lzma.FORMAT_XZ, preset=1)
        path = tmp_path / f"crafted-{next(counter)}.pkg"
        path.write_bytes(wrap(payload, signer or key))
        return path

    return _craft


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "app"
    (d / "static").mkdir(parents=True)
    (d / "grainhouse.json").write_bytes(manifest_bytes(icons={"app": "static/icon.svg"}))
    (d / "main.py").write_text("print('hello')\n")
    (d / "run.sh").write_text("#!/bin/sh\n")
    (d / "run.sh").chmod(0o755)
    (d / "static" / "icon.svg").write_text("<svg/>")
    (d / "static" / "alias.svg").symlink_to("icon.svg")
    return d


@pytest.fixture
def packages_root(tmp_path: Path) -> Path:
    root = tmp_path / "packages"
    root.mkdir()
    return root
