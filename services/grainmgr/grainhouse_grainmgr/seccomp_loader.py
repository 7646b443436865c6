"""Loads a compiled seccomp program on the calling thread: ctypes and prctl only.

Owns: the kernel interface of a filter: struct sock_filter's layout, the kernel's
instruction limit, and the two prctl calls (no_new_privs, then the filter itself).
Trusts: the program bytes from `seccomp_compiler.compile_filter` (only their shape is
checked here: the kernel checks the rest).
Never: loads libseccomp or forks (it runs in the fork server's child, right before exec);
imports anything outside the standard library (the fork server runs on a bare interpreter).
"""

from __future__ import annotations

import ctypes
import os
import struct

BPF_MAXINSNS = 4096
SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Loaded by soname at import: find_library would fork ldconfig.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): required before an unprivileged process loads a filter."""
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def install_filter(program: bytes) -> None:
    """Load `program` (from compile_filter) on the calling thread; it is inherited by exec.

    The caller must already have set no_new_privs (or hold CAP_SYS_ADMIN). Raises ValueError
    for a malformed program and OSError with the kernel's errno if the kernel refuses it.
    """
    count, rest = divmod(len(program), SOCK_FILTER.size)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise ValueError("a seccomp program is 1 to 4096 instructions of 8 bytes each")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
