"""Thin ctypes bindings for the Linux calls the sandbox needs and Python 3.11 lacks.

Owns: nothing but the `libc` handle; every function is a direct call that raises `OSError`
with the real errno on failure.
Trusts: the kernel ABI of x86-64 Linux (syscall numbers below).
Never: imports anything outside the standard library (the fork server runs on a bare
interpreter); calls `ctypes.util.find_library` (it forks `ldconfig`).
"""

from __future__ import annotations

import ctypes
import functools
import os

# Loaded by soname: find_library would fork ldconfig on every start.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYS_CAPSET = 126
_SYS_PIVOT_ROOT = 155
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def set_name(name: str) -> None:
    """This thread's name (/proc/<pid>/comm, what ps and top show): at most 15 bytes."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    address = ctypes.cast(buf, ctypes.c_void_p).value or 0  # `buf` outlives the call
    prctl(PR_SET_NAME, address)


@functools.cache
def cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


CAP_KILL = 5
CAP_SYS_ADMIN = 21


def drop_bounding_set(keep: tuple[int, ...] = ()) -> None:
    """Empty the bounding set but `keep`: what no later exec can gain. The effective and
    permitted sets are untouched (a process may go on using its capabilities)."""
    for cap in range(cap_last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def in_bounding_set(cap: int) -> bool:
    return prctl(PR_CAPBSET_READ, cap) == 1


def drop_capabilities(keep: tuple[int, ...] = (), bounding: bool = True) -> None:
    """Empty the bounding (unless `bounding` is False: emptied before), ambient and inheritable
    sets, and all but `keep` of the others."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if bounding:
        drop_bounding_set(keep)
    low = sum(1 << cap for cap in keep if cap < 32)
    high = sum(1 << (cap - 32) for cap in keep if cap >= 32)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    # Two {effective, permitted, inheritable} words: caps 0-31, then 32-63.
    data = (ctypes.c_uint32 * 6)(low, low, 0, high, high, 0)
    _check(_libc.syscall(_SYS_CAPSET, header, data), "capset")
