"""Decides whether a spawn request's host paths may be mounted, before anything is mounted.

Owns: the path policy for grains: every host path lies under an allowed root, is normalized,
contains no symlink component; a package holds no device files, fifos, sockets or set-id bits;
no symlink in a package or grain storage points out of its own tree. And the fork server's
memory of package trees already found clean (`CleanPackages`).
Trusts: the allowed roots given by the operator's settings; installed packages not to change
(see `CleanPackages`).
Never: follows a symlink while scanning; mounts, chowns or writes anything.
"""

from __future__ import annotations

import os
import stat

from grainhouse_grainmgr.spec import SandboxError, SpawnSpec

# Refuse absurd trees instead of walking them for minutes inside the fork server.
MAX_SCAN_ENTRIES = 200_000


class CleanPackages:
    """Package trees already scanned clean, so each is walked once per fork server, not per
    start (700 entries cost ~4 ms, a large app's tree far more).

    Safe because an installed package never changes: grainmgr unpacks it into read-only
    directories under a name that is the hash of its content, and removes it whole. A tree is
    known by its path and its root directory's identity (device, inode, ctime): a package
    removed and installed again at the same path is scanned again.
    """

    MAX = 4096  # forgotten all at once beyond this (they are rescanned, nothing is lost)

    def __init__(self) -> None:
        self._clean: dict[str, tuple[int, int, int]] = {}

    @staticmethod
    def _identity(path: str) -> tuple[int, int, int]:
        st = os.lstat(path)
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    def scan(self, path: str) -> None:
        try:
            before = self._identity(path)
        except OSError as exc:
            raise SandboxError("invalid", f"package_dir {path!r}: {exc.strerror}") from exc
        if self._clean.get(path) == before:
            return
        scan_tree("package_dir", path, package=True)
        if len(self._clean) >= self.MAX:
            self._clean.clear()
        self._clean[path] = before


def check_spec(
    spec: SpawnSpec, allowed_roots: tuple[str, ...], packages: CleanPackages | None = None
) -> None:
    """Raise SandboxError("invalid", ...) naming the first offending path."""
    spec.check()
    check_host_dir("package_dir", spec.package_dir, allowed_roots)
    check_host_dir("var_dir", spec.var_dir, allowed_roots)
    check_log_path(spec.log_path, allowed_roots)
    if packages is not None:
        packages.scan(spec.package_dir)
    else:
        scan_tree("package_dir", spec.package_dir, package=True)
    # Storage is the grain's to write: walked at every start.
    scan_tree("var_dir", spec.var_dir, package=False)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


def check_host_path(name: str, path: str, allowed_roots: tuple[str, ...]) -> None:
    if os.path.normpath(path) != path or "/../" in path + "/":
        raise SandboxError("invalid", f"{name} {path!r} is not a normalized absolute path")
    if not any(_under(path, root) for root in allowed_roots):
        raise SandboxError(
            "invalid", f"{name} {path!r} is outside the grain roots {list(allowed_roots)}"
        )
    real = os.path.realpath(path)
    if real != path:
        raise SandboxError(
            "invalid", f"{name} {path!r} goes through a symlink (it resolves to {real!r})"
        )


def check_host_dir(name: str, path: str, allowed_roots: tuple[str, ...]) -> None:
    check_host_path(name, path, allowed_roots)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SandboxError("invalid", f"{name} {path!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError("invalid", f"{name} {path!r} is not a directory")


def check_log_path(path: str, allowed_roots: tuple[str, ...]) -> None:
    check_host_path("log_path", path, allowed_roots)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise SandboxError("invalid", f"log_path's directory {parent!r} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise SandboxError("invalid", f"log_path {path!r} exists and is not a regular file")


def scan_tree(name: str, root: str, *, package: bool) -> None:
    """Walk `root` without following links; refuse what could carry privilege or escape."""
    seen = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise SandboxError(
                "invalid", f"{name}: cannot read {current!r}: {exc.strerror}"
            ) from exc
        for entry in entries:
            seen += 1
            if seen > MAX_SCAN_ENTRIES:
                raise SandboxError("invalid", f"{name} holds more than {MAX_SCAN_ENTRIES} entries")
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                _check_link(name, root, entry.path)
            elif stat.S_ISDIR(mode):
                if package and mode & (stat.S_ISUID | stat.S_ISGID):
                    raise SandboxError("invalid", f"{name}: {entry.path!r} has a set-id bit")
                stack.append(entry.path)
            elif stat.S_ISREG(mode):
                if package and mode & (stat.S_ISUID | stat.S_ISGID):
                    raise SandboxError("invalid", f"{name}: {entry.path!r} has a set-id bit")
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                raise SandboxError("invalid", f"{name}: {entry.path!r} is a device file")
            elif package:
                # Fifos and sockets have no business in a signed package.
                raise SandboxError("invalid", f"{name}: {entry.path!r} is not a file or directory")


def _check_link(name: str, root: str, link: str) -> None:
    target = os.readlink(link)
    if target.startswith("/"):
        raise SandboxError(
            "invalid", f"{name}: symlink {link!r} points to the absolute path {target!r}"
        )
    resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
    if not _under(resolved, root):
        raise SandboxError(
            "invalid", f"{name}: symlink {link!r} points out of its tree ({target!r})"
        )
