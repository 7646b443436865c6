"""The second wall: a Landlock ruleset that keeps a grain's file access inside its own tree.

Owns: the Landlock ruleset built for one grain (its rights, per ABI version) and its
application to the calling process.
Trusts: the path lists the launcher passes (paths inside the grain's final root, after
pivot_root); the kernel's answer to the ABI version query.
Never: imports anything outside the standard library (the fork server runs on a bare
interpreter); forks or loads libraries by `find_library`; handles network rights (the network
namespace is the wall for those, and a grain must bind and connect on loopback).

Why a second wall: the mount namespace already shows a grain only its own files. Landlock
repeats that decision in a different kernel subsystem, so a wrong bind mount (or a mount bug)
exposes nothing: outside the listed trees, opening, creating, removing, renaming and executing
fail with EACCES. Read-only trees allow reading and executing; read-write trees allow every
file right the kernel knows. Since ABI 6 the domain is also scoped: a grain cannot signal
processes outside it, nor connect to abstract Unix sockets created outside it.

Landlock restricts only what is opened after `restrict`: descriptors the grain inherited
(fd 3 to grainmgr, stdio) keep working. The restriction covers the calling thread and
everything it later forks or execs, so call it in the single-threaded launcher child, after
pivot_root and before the seccomp filter is loaded.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

# Loaded by soname: find_library would fork ldconfig.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86-64 (and asm-generic) numbers: Landlock came after the great renumbering, so they agree.
_NR_CREATE_RULESET = 444
_NR_ADD_RULE = 445
_NR_RESTRICT_SELF = 446
_PR_SET_NO_NEW_PRIVS = 38

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1

# Filesystem rights (linux/landlock.h), with the ABI version that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2: rename and link across directories
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5: ioctl on device files

_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: REFER, 3: TRUNCATE, 5: IOCTL_DEV}
# Rights that make sense on a file rather than a directory; the kernel refuses others there.
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
_READ_RIGHTS = EXECUTE | READ_FILE | READ_DIR

# Scopes (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

# Errnos that mean "no Landlock here": not built (ENOSYS), not enabled at boot (EOPNOTSUPP),
# or refused by an outer seccomp profile such as a container runtime's (EPERM).
_UNAVAILABLE = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM})


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel declares it __attribute__((packed)): 12 bytes
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _syscall(nr: int, *args: object) -> int:
    ret = int(_libc.syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 where Landlock is unavailable."""
    try:
        return _syscall(_NR_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    except OSError as exc:
        if exc.errno in _UNAVAILABLE:
            return 0
        raise


def handled_fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI can restrict (all of them are handled)."""
    rights = 0
    for since, bits in _FS_RIGHTS_BY_ABI.items():
        if abi >= since:
            rights |= bits
    return rights


def _attr_size(abi: int) -> int:
    # Older kernels reject a larger struct only if its extra bytes are non-zero; passing the
    # size of the ABI we speak keeps the call honest about what we asked for.
    if abi >= 6:
        return ctypes.sizeof(_RulesetAttr)
    if abi >= 4:
        return 16
    return 8


def _add_path(ruleset_fd: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"landlock: cannot open {path!r}: {exc.strerror}") from exc
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_RIGHTS  # e.g. /dev/null in the read-write list
        rule = _PathBeneathAttr(access, fd)
        try:
            _syscall(_NR_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        except OSError as exc:
            raise OSError(exc.errno, f"landlock_add_rule({path!r}): {exc.strerror}") from exc
    finally:
        os.close(fd)


def restrict(read_only: list[str], read_write: list[str]) -> bool:
    """Confine the calling process (and its future children) to the listed trees.

    `read_only` trees may be read and executed; `read_write` trees get every file right.
    Everything else on the filesystem becomes inaccessible (EACCES). Sets no_new_privs, which
    Landlock requires of an unprivileged caller. Returns False (and changes nothing) if the
    kernel lacks Landlock; raises OSError on any other failure, e.g. a missing path.
    """
    abi = abi_version()
    if abi < 1:
        return False
    handled = handled_fs_rights(abi)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled, 0, scoped)
    ruleset_fd = _syscall(
        _NR_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(_attr_size(abi)), 0
    )
    try:
        for path in read_only:
            _add_path(ruleset_fd, path, handled & _READ_RIGHTS)
        for path in read_write:
            _add_path(ruleset_fd, path, handled)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        _syscall(_NR_RESTRICT_SELF, ruleset_fd, 0)
    finally:
        os.close(ruleset_fd)
    return True
