"""The grain's system-call policy: an allowlist with a reason and an errno for every call.

Owns: the list of system calls a grain may make (in groups, each with its reason), the errno
every refused call answers with, and the argument rules (which arguments, and why). The BPF
program that encodes all this is built by `seccomp_compiler` and loaded by `seccomp_loader`.
Trusts: nothing; it is data. `seccomp_compiler` checks every name against libseccomp's table
of x86-64 system calls, and that no call is listed twice.
Never: allows a call by default; kills a process for a refused call; imports anything outside
the standard library (the fork server runs on a bare interpreter).

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
    program = seccomp_compiler.compile_filter()   # once, at grainmgr start
    ... fork, enter namespaces, drop capabilities, prctl(PR_SET_NO_NEW_PRIVS) ...
    seccomp_loader.install_filter(program)        # last, right before exec
"""

from __future__ import annotations

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
