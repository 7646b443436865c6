"""Try the system calls a grain must not make, and report the errno each one answered.

Owns: the probe table (which call, with which harmless arguments) and the errno the grain
seccomp policy promises for each (`EXPECTED_UNDER_FILTER`).
Trusts: nothing; it only reports what the kernel answered.
Never: imports anything outside the standard library (it runs inside a grain on whatever
interpreter the runtime holds, e.g. `/usr/bin/python3 syscall_probe.py --check`); makes a
call that would harm the host if no filter were loaded.

Every probe passes arguments that a kernel WITHOUT the filter rejects harmlessly with a
different errno (EFAULT for a NULL pointer, EINVAL for bad flags, ENOTTY for a terminal ioctl
on a pipe, ...), or that succeed harmlessly. So when a probe answers with the policy's errno,
the filter (not the kernel's own checks) refused it. A few calls are gated by a capability
before any argument check; without root the kernel itself answers EPERM for them
(`KERNEL_EPERM_WITHOUT_ROOT`), so only a root run tells the filter apart there.

x86-64 only: the numbers below are checked against libseccomp by the unit tests.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import sys
from collections.abc import Callable

# Loaded by soname: find_library would fork ldconfig.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

NR: dict[str, int] = {
    "ioctl": 16,
    "getpid": 39,
    "socket": 41,
    "clone": 56,
    "ptrace": 101,
    "syslog": 103,
    "personality": 135,
    "modify_ldt": 154,
    "pivot_root": 155,
    "chroot": 161,
    "mount": 165,
    "umount2": 166,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "clone3": 435,
}

X32_SYSCALL_BIT = 0x40000000
HIGH_JUNK = 0xDEADBEEF << 32  # bits the kernel drops from 32-bit arguments
CLONE_THREAD = 0x00010000  # without CLONE_SIGHAND the kernel answers EINVAL before anything
CLONE_FLAGS = {
    "newns": 0x00020000,
    "newcgroup": 0x02000000,
    "newuts": 0x04000000,
    "newipc": 0x08000000,
    "newuser": 0x10000000,
    "newpid": 0x20000000,
    "newnet": 0x40000000,
}
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
FIONREAD = 0x541B
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17
SOCK_STREAM, SOCK_RAW = 1, 3
SOCK_CLOEXEC = 0o2000000
IPPROTO_ICMP, IPPROTO_ICMPV6 = 1, 58
ADDR_NO_RANDOMIZE = 0x0040000
UFFD_USER_MODE_ONLY = 1

Result = dict[str, int]


def _syscall(nr: int, *args: int) -> Result:
    """syscall(nr, args...) with every argument passed as a full 64-bit word."""
    words = [ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args]
    ret = _libc.syscall(ctypes.c_long(nr), *words)
    return {"ret": ret, "errno": ctypes.get_errno() if ret == -1 else 0}


def _and_close(result: Result) -> Result:
    # Probes that may create a descriptor close it, so a control run leaks nothing.
    if result["ret"] >= 0 and result["errno"] == 0:
        os.close(result["ret"])
    return result


def _on_pipe(request: int) -> Result:
    # A pipe is not a terminal: without the filter the kernel answers ENOTTY, never EPERM.
    read_end, write_end = os.pipe()
    try:
        value = ctypes.c_int(0)
        return _syscall(NR["ioctl"], read_end, request, ctypes.addressof(value))
    finally:
        os.close(read_end)
        os.close(write_end)


def _int80_getpid() -> Result:
    """getpid through the 32-bit `int 0x80` entry point (seccomp_data.arch = i386)."""
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20; int 0x80; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ret = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    if -4096 < ret < 0:
        return {"ret": -1, "errno": -ret, "pid": os.getpid()}
    return {"ret": ret, "errno": 0, "pid": os.getpid()}


def _clone_probe(flag: int, junk: int = 0) -> Callable[[], Result]:
    return lambda: _syscall(NR["clone"], junk | flag | CLONE_THREAD, 0, 0, 0, 0)


PROBES: dict[str, Callable[[], Result]] = {
    "ptrace": lambda: _syscall(NR["ptrace"], 0x7FFF, os.getpid(), 0, 0),
    "keyctl": lambda: _syscall(NR["keyctl"], 0x7FFF, 0, 0, 0, 0),
    "add_key": lambda: _syscall(NR["add_key"], 0, 0, 0, 0, 0),
    "request_key": lambda: _syscall(NR["request_key"], 0, 0, 0, 0),
    "bpf": lambda: _syscall(NR["bpf"], 0x7FFF, 0, 0),
    "userfaultfd": lambda: _syscall(NR["userfaultfd"], UFFD_USER_MODE_ONLY | 2),
    "perf_event_open": lambda: _syscall(NR["perf_event_open"], 0, 0, -1, -1, 0),
    "mount": lambda: _syscall(NR["mount"], 0, 0, 0, 0, 0),
    "umount2": lambda: _syscall(NR["umount2"], 0, 0x100),
    "pivot_root": lambda: _syscall(NR["pivot_root"], 0, 0),
    "chroot": lambda: _syscall(NR["chroot"], 0),
    "unshare": lambda: _syscall(NR["unshare"], 0),
    "setns": lambda: _syscall(NR["setns"], -1, 0),
    **{f"clone_{n}": _clone_probe(f) for n, f in CLONE_FLAGS.items()},
    "clone_newuser_high_junk": _clone_probe(CLONE_FLAGS["newuser"], HIGH_JUNK),
    "clone3": lambda: _syscall(NR["clone3"], 0, 0),
    "io_uring_setup": lambda: _and_close(_syscall(NR["io_uring_setup"], 0, 0)),
    "open_by_handle_at": lambda: _syscall(NR["open_by_handle_at"], -1, 0, 0),
    "kexec_load": lambda: _syscall(NR["kexec_load"], 0, 0xFFFF, 0, 0),
    "process_vm_readv": lambda: _syscall(NR["process_vm_readv"], os.getpid(), 0, 0, 0, 0, 0),
    "personality_set": lambda: _syscall(NR["personality"], ADDR_NO_RANDOMIZE),
    "personality_query": lambda: _syscall(NR["personality"], 0xFFFFFFFF),
    "syslog": lambda: _syscall(NR["syslog"], 10, 0, 0),
    "modify_ldt": lambda: _syscall(NR["modify_ldt"], 0, 0, 0),
    "ioctl_tiocsti": lambda: _on_pipe(TIOCSTI),
    "ioctl_tiocsti_high_junk": lambda: _on_pipe(HIGH_JUNK | TIOCSTI),
    "ioctl_tioclinux": lambda: _on_pipe(TIOCLINUX),
    "ioctl_tioclinux_high_junk": lambda: _on_pipe(HIGH_JUNK | TIOCLINUX),
    "ioctl_fionread": lambda: _on_pipe(FIONREAD),
    "socket_netlink": lambda: _and_close(_syscall(NR["socket"], AF_NETLINK, SOCK_RAW, 0)),
    "socket_packet": lambda: _and_close(_syscall(NR["socket"], AF_PACKET, SOCK_RAW, 0)),
    "socket_inet_raw": lambda: _and_close(
        _syscall(NR["socket"], AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP)
    ),
    "socket_inet6_raw": lambda: _and_close(
        _syscall(NR["socket"], AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)
    ),
    "socket_inet_stream": lambda: _and_close(_syscall(NR["socket"], AF_INET, SOCK_STREAM, 0)),
    "socket_inet6_stream": lambda: _and_close(_syscall(NR["socket"], AF_INET6, SOCK_STREAM, 0)),
    "socket_unix_stream": lambda: _and_close(_syscall(NR["socket"], AF_UNIX, SOCK_STREAM, 0)),
    "int80_getpid": _int80_getpid,
    "x32_getpid": lambda: _syscall(X32_SYSCALL_BIT | NR["getpid"]),
    "getpid": lambda: _syscall(NR["getpid"]),
}

# What the grain policy answers; 0 means the call must go through.
EXPECTED_UNDER_FILTER: dict[str, int] = {
    **dict.fromkeys(
        [
            "ptrace",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "userfaultfd",
            "perf_event_open",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "unshare",
            "setns",
            "clone_newuser_high_junk",
            "open_by_handle_at",
            "kexec_load",
            "process_vm_readv",
            "personality_set",
            "syslog",
            "ioctl_tiocsti",
            "ioctl_tiocsti_high_junk",
            "ioctl_tioclinux",
            "ioctl_tioclinux_high_junk",
            "socket_inet_raw",
            "socket_inet6_raw",
        ],
        errno.EPERM,
    ),
    **{f"clone_{n}": errno.EPERM for n in CLONE_FLAGS},
    "clone3": errno.ENOSYS,
    "io_uring_setup": errno.ENOSYS,
    "modify_ldt": errno.ENOSYS,
    "int80_getpid": errno.ENOSYS,
    "x32_getpid": errno.ENOSYS,
    "socket_netlink": errno.EAFNOSUPPORT,
    "socket_packet": errno.EAFNOSUPPORT,
    "personality_query": 0,
    "ioctl_fionread": 0,
    "socket_inet_stream": 0,
    "socket_inet6_stream": 0,
    "socket_unix_stream": 0,
    "getpid": 0,
}

# Gated by a capability before any argument is read on some kernels or sysctl settings: run
# without root, the kernel itself may answer EPERM, and only a root run tells the filter apart.
KERNEL_EPERM_WITHOUT_ROOT = frozenset(
    [
        "pivot_root",
        "open_by_handle_at",
        "kexec_load",
        "syslog",
        "socket_inet_raw",
        "socket_inet6_raw",
        "bpf",
        "perf_event_open",
    ]
)


def run(names: list[str]) -> dict[str, Result]:
    """Run the named probes (all of them if `names` is empty) in this process."""
    return {name: PROBES[name]() for name in (names or list(PROBES))}


def mismatches(results: dict[str, Result]) -> dict[str, str]:
    """Probes whose answer differs from EXPECTED_UNDER_FILTER, with a readable reason."""
    wrong: dict[str, str] = {}
    for name, result in results.items():
        want = EXPECTED_UNDER_FILTER[name]
        got = result["errno"]
        if got != want:
            wrong[name] = f"expected {errno.errorcode.get(want, want)}, got " + (
                errno.errorcode.get(got, str(got)) if got else f"success ({result['ret']})"
            )
    return wrong


def main(argv: list[str]) -> int:
    """`syscall_probe.py [--check] [name...]`: print JSON; with --check, exit 1 on mismatch."""
    check = "--check" in argv
    names = [a for a in argv if a != "--check"]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        print(json.dumps({"unknown_probes": unknown}))
        return 2
    results = run(names)
    if not check:
        print(json.dumps(results, sort_keys=True))
        return 0
    wrong = mismatches(results)
    print(json.dumps({"results": results, "mismatches": wrong}, sort_keys=True))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
