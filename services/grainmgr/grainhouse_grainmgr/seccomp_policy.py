"""The grain's system-call policy: an allowlist, compiled once to classic BPF, loaded last.

Owns: the list of system calls a grain may make (in groups, each with its reason), the errno
every refused call answers with, and the BPF program that encodes both.
Trusts: libseccomp's table of x86-64 system-call numbers, read once by `compile_filter` when
grainmgr starts (by soname: no `find_library`, which forks `ldconfig`).
Never: loads libseccomp or forks in `install_filter` (it runs in the fork server's child,
right before exec); kills a process for a refused call; allows a call by default; imports
anything outside the standard library (the fork server runs on a bare interpreter).

How the program decides, in order (see docs/seccomp.md for the reasoning, group by group):
1. a system call made through another ABI (x86 `int 0x80`, or x32 numbers with bit
   0x40000000) answers ENOSYS, as on a kernel built without that ABI;
2. a binary search on the number leads to the call's decision:
   - a call in `ALLOWED` is allowed whatever its arguments (the kernel caches these, so
     they cost nothing after the filter is loaded);
   - `clone`, `socket`, `socketpair`, `ioctl` and `personality` are allowed or refused by
     their arguments (`ARGUMENT_RULES`);
   - a call in `PRIVILEGED` answers EPERM, as it would for a process without capabilities;
   - anything else, including calls newer than this policy, answers ENOSYS, so that libc
     and language runtimes take their fallback path (glibc retries `clone3` as `clone`).

Usage, in this order:
    program = compile_filter()            # once, at grainmgr start
    ... fork, enter namespaces, drop capabilities, prctl(PR_SET_NO_NEW_PRIVS) ...
    install_filter(program)               # last, right before exec
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass


class UnsupportedArchitectureError(RuntimeError):
    """The host is not a machine this policy was written and tested for."""


class PolicyError(RuntimeError):
    """The policy itself is inconsistent (a typo, or a call listed twice): a bug here."""


@dataclass(frozen=True)
class Group:
    """System calls that share one decision and one reason."""

    name: str
    why: str
    syscalls: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# The policy. Every name is the x86-64 name libseccomp knows. Adding a call means adding it
# to the group whose reason covers it (or a new group with its own reason), then docs/seccomp.md.
# ---------------------------------------------------------------------------------------------

# One call per line would stretch the policy over a thousand lines; keep the paragraphs.
# fmt: off
ALLOWED: tuple[Group, ...] = (
    Group(
        "memory",
        "Every program maps, protects and releases its own memory (malloc, the dynamic "
        "loader, JIT compilers). Locked memory is bounded by RLIMIT_MEMLOCK; NUMA policy "
        "only moves the caller's own pages.",
        (
            "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
            "mlock", "mlock2", "munlock", "mlockall", "munlockall", "membarrier",
            "memfd_create", "pkey_alloc", "pkey_free", "pkey_mprotect", "get_mempolicy",
            "set_mempolicy", "mbind", "map_shadow_stack",
        ),
    ),
    Group(
        "file-io",
        "Reading and writing through descriptors. What a grain can reach is decided by its "
        "mount namespace and by Landlock, not by this filter.",
        (
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
            "preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close",
            "close_range", "lseek", "dup", "dup2", "dup3", "fcntl", "flock", "fsync",
            "fdatasync", "sync", "syncfs", "sync_file_range", "truncate", "ftruncate",
            "fallocate", "fadvise64", "readahead", "sendfile", "splice", "tee", "vmsplice",
            "copy_file_range", "pipe", "pipe2",
        ),
    ),
    Group(
        "file-metadata",
        "Building and walking directory trees inside the grain's own root. Changing owners "
        "or creating device nodes still needs capabilities a grain never holds; mknod of a "
        "FIFO or a socket needs none and is how mkfifo works.",
        (
            "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access",
            "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64",
            "getcwd", "chdir", "fchdir", "umask", "mkdir", "mkdirat", "rmdir", "unlink",
            "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
            "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown",
            "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat", "mknod",
            "mknodat", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr",
            "flistxattr", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
            "lremovexattr", "fremovexattr",
        ),
    ),
    Group(
        "event-loops",
        "asyncio, uvloop and uvicorn wait for descriptors, timers and signals with these.",
        (
            "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
            "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
            "signalfd", "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime",
            "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        ),
    ),
    Group(
        "time",
        "Reading clocks, sleeping and per-process timers. Setting the clock is privileged "
        "(see machine-administration).",
        (
            "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday",
            "time", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
            "timer_gettime", "timer_getoverrun", "timer_delete", "pause", "times",
        ),
    ),
    Group(
        "threads-and-scheduling",
        "glibc's pthreads and Python's threading: futexes, thread-local storage (arch_prctl), "
        "robust lists, restartable sequences, affinity and nice values. Real-time "
        "priorities still need CAP_SYS_NICE, which a grain lacks.",
        (
            "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address",
            "rseq", "arch_prctl", "gettid", "sched_yield", "sched_getaffinity",
            "sched_setaffinity", "sched_getparam", "sched_setparam", "sched_getscheduler",
            "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
            "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getpriority",
            "setpriority", "ioprio_get", "ioprio_set", "getcpu",
        ),
    ),
    Group(
        "processes",
        "Starting helpers (fork, vfork, exec), waiting for them and signalling them. The pid "
        "namespace limits every target to the grain's own processes. `clone` is allowed only "
        "without namespace flags (see ARGUMENT_RULES).",
        (
            "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
            "kill", "tkill", "tgkill", "getpid", "getppid", "getpgid", "getpgrp", "setpgid",
            "getsid", "setsid", "pidfd_open", "pidfd_send_signal", "prctl",
            "restart_syscall",
        ),
    ),
    Group(
        "signals",
        "Installing handlers, masking and waiting for signals; rt_sigreturn ends every handler.",
        (
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
            "rt_sigtimedwait", "rt_sigsuspend", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
            "sigaltstack",
        ),
    ),
    Group(
        "identity-and-limits",
        "Programs ask who they are and may switch to ids they already hold (servers that "
        "'drop privileges' at start). Gaining other ids, capabilities or higher limits needs "
        "capabilities a grain never has, so the kernel refuses those itself.",
        (
            "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
            "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
            "setgroups", "setfsuid", "setfsgid", "capget", "capset", "getrlimit",
            "setrlimit", "prlimit64", "getrusage", "sysinfo", "uname", "getrandom",
        ),
    ),
    Group(
        "network",
        "The app serves HTTP on loopback and the bridge talks over a Unix socket. The "
        "network namespace decides where packets can go; which sockets may be created is "
        "decided in ARGUMENT_RULES (`socket`, `socketpair`).",
        (
            "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername",
            "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
            "setsockopt", "getsockopt",
        ),
    ),
    Group(
        "ipc",
        "PostgreSQL, SQLite and multiprocessing use System V and POSIX IPC; the objects live "
        "in the grain's own IPC namespace.",
        (
            "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
            "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
            "mq_timedreceive", "mq_notify", "mq_getsetattr",
        ),
    ),
    Group(
        "native-aio",
        "Linux native AIO, used by databases. Unlike io_uring it is a small, old interface "
        "whose requests pass the normal file checks and this filter's view of the caller.",
        ("io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"),
    ),
    Group(
        "self-confinement",
        "An app may narrow itself further (browsers, language sandboxes). A stacked seccomp "
        "filter or a Landlock domain can only remove rights, never add them.",
        ("seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"),
    ),
)

# Refused with EPERM: what the kernel itself answers a process without capabilities, so
# programs that probe for these (and handle "not permitted") behave as in any container.
PRIVILEGED: tuple[Group, ...] = (
    Group(
        "namespaces-and-mounts",
        "The grain's root, mounts and namespaces are fixed by the launcher. New user "
        "namespaces are the door to most kernel privilege-escalation bugs; mounts and chroot "
        "could hide or re-expose files the launcher arranged.",
        (
            "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
            "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
        ),
    ),
    Group(
        "other-processes",
        "Reading, writing or steering another process's memory or descriptors. Even inside "
        "the grain this is a debugger's power, and a classic sandbox-escape tool.",
        (
            "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
            "pidfd_getfd", "migrate_pages", "move_pages",
        ),
    ),
    Group(
        "kernel-interfaces",
        "Large kernel interfaces with a long record of exploitable bugs that no web app "
        "needs: eBPF, perf events, userfaultfd (stalls the kernel at will), the kernel "
        "keyrings (not namespaced), file handles (open_by_handle_at walks around the mount "
        "tree), fanotify, quotas and the kernel log.",
        (
            "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
            "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl",
            "quotactl_fd", "syslog", "lookup_dcookie",
        ),
    ),
    Group(
        "machine-administration",
        "Operations on the whole machine: loading kernels and modules, rebooting, swap, "
        "process accounting, the clock, host and domain names, I/O ports, hanging up "
        "terminals.",
        (
            "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
            "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime",
            "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm",
            "vhangup",
        ),
    ),
)

# Refused with ENOSYS like every unlisted call; listed only so that the reason is written down.
NOT_PROVIDED: tuple[Group, ...] = (
    Group(
        "clone3",
        "Its flags live in memory, which a seccomp filter cannot read, so namespace flags "
        "could not be refused. glibc (2.34+) treats ENOSYS from clone3 as 'old kernel' and "
        "falls back to clone, whose flags are checked below.",
        ("clone3",),
    ),
    Group(
        "io_uring",
        "A second system-call interface: its operations are not seen by seccomp, and it has "
        "been the source of many kernel exploits. Runtimes fall back to epoll on ENOSYS.",
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    ),
    Group(
        "legacy",
        "Obsolete interfaces no current program needs: 16-bit segments (modify_ldt), a.out "
        "libraries, old sysctl and filesystem-statistics calls, 32-bit TLS descriptors.",
        (
            "modify_ldt", "uselib", "_sysctl", "ustat", "sysfs", "get_thread_area",
            "set_thread_area", "remap_file_pages",
        ),
    ),
)

# fmt: on

# Constants for the argument rules (x86-64 values, from the kernel's UAPI headers).
CLONE_NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
# CLONE_NEWTIME (0x80) is not in the mask: in clone() the low byte is the exit signal, so the
# kernel only honours CLONE_NEWTIME through clone3 and unshare, both refused outright.
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
SOCK_TYPE_MASK = 0xF  # the rest of `type` is SOCK_NONBLOCK / SOCK_CLOEXEC
SOCK_RAW = 3
SOCK_PACKET = 10
TIOCSTI = 0x5412  # pushes bytes into a terminal's input: types commands into the parent shell
TIOCLINUX = 0x541C  # console tricks, including copy/paste selection injection
PERSONALITY_QUERY = 0xFFFFFFFF  # personality(0xffffffff) only reports the current persona
PER_LINUX = 0x0000

# Why each argument rule exists; docs/seccomp.md repeats this with the details.
ARGUMENT_RULES: dict[str, str] = {
    "clone": "Allowed without namespace flags (fork, vfork, threads); any CLONE_NEW* flag "
    "answers EPERM, as unshare does.",
    "socket": "AF_UNIX, AF_INET and AF_INET6 only; other families (netlink, packet, "
    "bluetooth...) answer EAFNOSUPPORT, as a kernel without them would. SOCK_RAW and "
    "SOCK_PACKET on inet families answer EPERM, as without CAP_NET_RAW.",
    "socketpair": "Same family rule as socket (only AF_UNIX pairs exist in practice).",
    "ioctl": "Allowed except TIOCSTI and TIOCLINUX (EPERM). The kernel reads the request as a "
    "32-bit number, so only the low 32 bits are compared: junk above cannot slip through.",
    "personality": "Only the query personality(0xffffffff) and PER_LINUX (a no-op) are "
    "allowed; other personas (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC...) weaken exploit "
    "mitigations and answer EPERM.",
}

# ---------------------------------------------------------------------------------------------
# Mechanism: classic BPF over struct seccomp_data. Nothing below is policy.
# ---------------------------------------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
BPF_MAXINSNS = 4096

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARGS = 16

# Opcodes (linux/bpf_common.h): only the handful this compiler emits.
_LD_W_ABS = 0x00 | 0x00 | 0x20
_JMP_JEQ_K = 0x05 | 0x10
_JMP_JGE_K = 0x05 | 0x30
_JMP_JSET_K = 0x05 | 0x40
_JMP_JA = 0x05 | 0x00
_ALU_AND_K = 0x04 | 0x50
_RET_K = 0x06

_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
Insn = tuple[int, int, int, int]  # (code, jt, jf, k), as in struct sock_filter


def errno_action(number: int) -> int:
    """The SECCOMP_RET value that makes a call fail with `number` in errno."""
    return SECCOMP_RET_ERRNO | (number & 0xFFFF)


ALLOW = SECCOMP_RET_ALLOW
DENY_ENOSYS = errno_action(errno.ENOSYS)
DENY_EPERM = errno_action(errno.EPERM)
DENY_EAFNOSUPPORT = errno_action(errno.EAFNOSUPPORT)


@dataclass(frozen=True)
class _Insn:
    """One instruction; `jt`/`jf` are label names resolved when a block is assembled."""

    code: int
    k: int
    jt: str | None = None
    jf: str | None = None
    label: str | None = None


def _arg_low(index: int) -> int:
    # The low half of a 64-bit argument on a little-endian machine. Every rule below compares
    # only the low half on purpose: the kernel reads these arguments as 32-bit ints.
    return _OFFSET_ARGS + 8 * index


def _assemble(block: Sequence[_Insn]) -> list[Insn]:
    """Resolve label jumps inside one block to the relative offsets BPF wants."""
    where = {insn.label: i for i, insn in enumerate(block) if insn.label}
    out: list[Insn] = []
    for i, insn in enumerate(block):
        jt = where[insn.jt] - i - 1 if insn.jt else 0
        jf = where[insn.jf] - i - 1 if insn.jf else 0
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise PolicyError("a BPF jump goes backwards or too far")
        out.append((insn.code, jt, jf, insn.k))
    return out


def _ret(action: int, label: str | None = None) -> _Insn:
    return _Insn(_RET_K, action, label=label)


def _clone_rule() -> list[_Insn]:
    return [
        _Insn(_LD_W_ABS, _arg_low(0)),  # clone flags: the kernel keeps only the low 32 bits
        _Insn(_JMP_JSET_K, CLONE_NAMESPACE_FLAGS, jt="deny", jf="allow"),
        _ret(DENY_EPERM, "deny"),
        _ret(ALLOW, "allow"),
    ]


def _socket_rule() -> list[_Insn]:
    return [
        _Insn(_LD_W_ABS, _arg_low(0)),  # domain (an int)
        _Insn(_JMP_JEQ_K, AF_UNIX, jt="allow"),
        _Insn(_JMP_JEQ_K, AF_INET, jt="inet"),
        _Insn(_JMP_JEQ_K, AF_INET6, jt="inet"),
        _ret(DENY_EAFNOSUPPORT),
        _Insn(_LD_W_ABS, _arg_low(1), label="inet"),  # type (an int), flags in the high bits
        _Insn(_ALU_AND_K, SOCK_TYPE_MASK),
        _Insn(_JMP_JEQ_K, SOCK_RAW, jt="deny"),
        _Insn(_JMP_JEQ_K, SOCK_PACKET, jt="deny"),
        _ret(ALLOW, "allow"),
        _ret(DENY_EPERM, "deny"),
    ]


def _ioctl_rule() -> list[_Insn]:
    return [
        _Insn(_LD_W_ABS, _arg_low(1)),  # request: `unsigned int cmd` in the kernel
        _Insn(_JMP_JEQ_K, TIOCSTI, jt="deny"),
        _Insn(_JMP_JEQ_K, TIOCLINUX, jt="deny"),
        _ret(ALLOW),
        _ret(DENY_EPERM, "deny"),
    ]


def _personality_rule() -> list[_Insn]:
    return [
        _Insn(_LD_W_ABS, _arg_low(0)),  # persona: `unsigned int` in the kernel
        _Insn(_JMP_JEQ_K, PERSONALITY_QUERY, jt="allow"),
        _Insn(_JMP_JEQ_K, PER_LINUX, jt="allow"),
        _ret(DENY_EPERM),
        _ret(ALLOW, "allow"),
    ]


_ARGUMENT_BLOCKS = {
    "clone": _clone_rule,
    "socket": _socket_rule,
    "socketpair": _socket_rule,
    "ioctl": _ioctl_rule,
    "personality": _personality_rule,
}


def decisions() -> dict[str, str]:
    """Every named call and what the policy does with it: allow, args, EPERM or ENOSYS."""
    table: dict[str, str] = {}

    def put(name: str, decision: str) -> None:
        if name in table:
            raise PolicyError(f"{name} is listed twice in the seccomp policy")
        table[name] = decision

    for group in ALLOWED:
        for name in group.syscalls:
            put(name, "allow")
    for name in ARGUMENT_RULES:
        put(name, "args")
    for group in PRIVILEGED:
        for name in group.syscalls:
            put(name, "EPERM")
    for group in NOT_PROVIDED:
        for name in group.syscalls:
            put(name, "ENOSYS")
    if set(ARGUMENT_RULES) != set(_ARGUMENT_BLOCKS):
        raise PolicyError("every argument rule needs both a reason and a BPF block")
    return table


def _check_native_architecture() -> None:
    machine = platform.machine()
    if machine != "x86_64" or sys.byteorder != "little" or sys.maxsize <= 2**32:
        # TODO(someday): aarch64 needs its own audit arch, its own names (no open, fork...)
        # and its own tests before it can be trusted; until then, refuse loudly.
        raise UnsupportedArchitectureError(
            f"the grain seccomp policy is written for x86_64 only; this host is {machine!r}"
        )


def _resolve_numbers(names: Sequence[str]) -> dict[str, int]:
    """x86-64 numbers for `names`, from libseccomp's table (loaded by soname, no fork)."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise PolicyError(
            "libseccomp.so.2 is needed once at start to number system calls "
            "(Debian package libseccomp2)"
        ) from exc
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    numbers: dict[str, int] = {}
    for name in names:
        number = lib.seccomp_syscall_resolve_name_arch(AUDIT_ARCH_X86_64, name.encode())
        if number < 0:
            # Negative answers are libseccomp's "not on this architecture" pseudo numbers.
            raise PolicyError(f"{name!r} is not an x86_64 system call known to libseccomp")
        numbers[name] = number
    if len(set(numbers.values())) != len(numbers):
        raise PolicyError("two policy names resolve to the same system call number")
    return numbers


def syscall_numbers() -> dict[str, int]:
    """The x86-64 number of every call the policy names (for the compiler and the tests)."""
    _check_native_architecture()
    return _resolve_numbers(sorted(decisions()))


def _action_block(decision: str, name: str) -> list[_Insn]:
    if decision == "allow":
        return [_ret(ALLOW)]
    if decision == "EPERM":
        return [_ret(DENY_EPERM)]
    if decision == "ENOSYS":
        return [_ret(DENY_ENOSYS)]
    return _ARGUMENT_BLOCKS[name]()


_ENOSYS_BLOCK: list[Insn] = [(_RET_K, 0, 0, DENY_ENOSYS)]


def _intervals(entries: Sequence[tuple[int, list[Insn]]]) -> list[tuple[int, list[Insn]]]:
    """(start, block) pairs covering every number: a block rules from its start to the next.

    Neighbouring numbers with the same decision share one interval (x86-64 numbers the old
    basic calls densely, so about 350 named calls fold into far fewer intervals), and the
    gaps between named calls are ENOSYS intervals.
    """
    out: list[tuple[int, list[Insn]]] = []

    def add(start: int, block: list[Insn]) -> None:
        if not out or out[-1][1] != block:
            out.append((start, block))

    following = 0
    for number, block in entries:
        if number > following:
            add(following, _ENOSYS_BLOCK)
        add(number, block)
        following = number + 1
    add(following, _ENOSYS_BLOCK)
    return out


def _search(intervals: Sequence[tuple[int, list[Insn]]]) -> list[Insn]:
    """A binary search over the intervals, ending in each interval's block.

    A tree rather than a chain of comparisons: a refused or argument-checked call walks a
    dozen instructions instead of hundreds, and the program stays short, which matters
    because the kernel translates and JITs the whole program on every `install_filter`.
    """
    if len(intervals) == 1:
        return list(intervals[0][1])
    middle = len(intervals) // 2
    below = _search(intervals[:middle])
    above = _search(intervals[middle:])
    pivot = intervals[middle][0]
    if len(below) <= 255:
        return [(_JMP_JGE_K, len(below), 0, pivot), *below, *above]
    # Conditional jumps reach only 255 ahead; the unconditional one takes a 32-bit offset.
    return [(_JMP_JGE_K, 0, 1, pivot), (_JMP_JA, 0, 0, len(below)), *below, *above]


def _emit(decided: dict[str, str], numbers: dict[str, int]) -> list[Insn]:
    program: list[Insn] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, DENY_ENOSYS),  # int 0x80 and any other foreign ABI
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
        (_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, DENY_ENOSYS),  # x32 numbers on the x86_64 entry point
    ]
    entries = []
    for name in sorted(decided, key=numbers.__getitem__):
        block = _assemble(_action_block(decided[name], name))
        if len(block) > 255:
            raise PolicyError(f"the BPF block for {name} is too long for a conditional jump")
        entries.append((numbers[name], block))
    program.extend(_search(_intervals(entries)))
    if len(program) > BPF_MAXINSNS:
        raise PolicyError("the seccomp program exceeds the kernel's 4096-instruction limit")
    return program


@functools.cache
def compile_filter() -> bytes:
    """The policy as a BPF program: an array of struct sock_filter (8 bytes each).

    Call once when grainmgr starts; the result is deterministic for a given policy and
    libseccomp table. Raises UnsupportedArchitectureError on anything but x86_64 and
    PolicyError if the policy is inconsistent or libseccomp is missing.
    """
    decided = decisions()
    numbers = syscall_numbers()
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in _emit(decided, numbers))


# ---------------------------------------------------------------------------------------------
# Loading. Runs in the launcher's child after fork: ctypes and prctl only, nothing that forks.
# ---------------------------------------------------------------------------------------------

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
    count, rest = divmod(len(program), _SOCK_FILTER.size)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise ValueError("a seccomp program is 1 to 4096 instructions of 8 bytes each")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
