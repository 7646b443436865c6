"""The vocabulary of archive validation: refusal reasons, limits, verdicts.

Owns: the names of `ArchiveRefusalReason` values (backup.proto) as the validator and the
backup service spell them, the `Limits` a validator runs under, the `Verdict` it returns, and
how an untrusted entry name is shown in a message.
Trusts: nothing in an archive (`shown` escapes whatever name it is given).
Never: reads an archive, starts a process, or imports the rest of the validator.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names of ArchiveRefusalReason values (backup.proto), without the prefix.
ZIP_SLIP = "ZIP_SLIP"
ABSOLUTE_PATH = "ABSOLUTE_PATH"
SYMLINK = "SYMLINK"
HARD_LINK = "HARD_LINK"
DEVICE_FILE = "DEVICE_FILE"
DUPLICATE_NAME = "DUPLICATE_NAME"
SIZE_BOMB = "SIZE_BOMB"
RATIO_BOMB = "RATIO_BOMB"
TOO_MANY_FILES = "TOO_MANY_FILES"
TRUNCATED_OR_CORRUPT = "TRUNCATED_OR_CORRUPT"
CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
BAD_METADATA = "BAD_METADATA"
BAD_NAME = "BAD_NAME"
# Reasons decided outside this process (they need grainmgr, or come before the upload ends).
APP_NOT_INSTALLED = "APP_NOT_INSTALLED"
APP_TOO_OLD = "APP_TOO_OLD"
ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 10 * 1024**3
    max_ratio: int = 200
    max_files: int = 1_000_000
    # Confinement of the validator process itself.
    max_memory_bytes: int = 1024 * 1024**2
    max_cpu_seconds: int = 600


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    message: str = ""
    entry: str = ""
    file_count: int = 0
    total_bytes: int = 0
    confinement: tuple[str, ...] = ()  # steps the validator process applied to itself


class Refusal(Exception):
    def __init__(self, reason: str, message: str, entry: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.entry = entry


def shown(name: str) -> str:
    """An untrusted entry name made safe for a message: escaped, at most 512 chars."""
    text = name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:512]
