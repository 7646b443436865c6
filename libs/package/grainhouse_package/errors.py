"""The one error type of the package library, with a kind callers map to HTTP/gRPC status.

Owns: the list of error kinds a package operation can fail with.
Trusts: nothing.
Never: imports a service, a transport library, or any other module of this package.
"""

from __future__ import annotations

from typing import Literal

#: invalid: the package (or author input) is malformed, hostile or unsigned.
#: conflict: a valid package that cannot replace what is installed (version rules, app id).
#: too_large: a cap in `Caps` was exceeded (bytes, files, manifest size, compression ratio).
#: not_found: a file or key the caller named does not exist.
#: internal: the local machine failed us (disk full, permissions of the packages root).
ErrorKind = Literal["invalid", "conflict", "too_large", "not_found", "internal"]


class PackageError(Exception):
    """A package operation failed; `message` is safe to show to the package's uploader."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"PackageError({self.kind!r}, {self.message!r})"
