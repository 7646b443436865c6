"""The operator key: proof that the caller can read the server's data directory.

Owns: the operator key file (created once, mode 0600, 256 random bits).
Trusts: the file system permissions of the data directory.
Never: logs or returns the key.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def load_or_create(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        key = secrets.token_urlsafe(32)
        fh.write(key + "\n")
    return key


def matches(expected: str, offered: str) -> bool:
    return bool(offered) and hmac.compare_digest(expected.encode(), offered.encode())
