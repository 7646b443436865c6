#!/usr/bin/env python3
"""Write grainmgr.json, the seccomp profile of the grainmgr container, from the groups below.

Owns: deploy/seccomp/grainmgr.json (generated; a unit test fails when it is stale).
Trusts: nothing; the policy is the data in this file.
Never: allows a call in REFUSED (each would let a process in the container reach the host
kernel's most dangerous interfaces), whatever group it might seem to belong to.

Shape: an allowlist. Calls not named answer ENOSYS (the errno of a kernel that lacks them, so
runtimes take their fallbacks); only the native 64-bit ABIs are listed, so 32-bit x86 and
x32 calls are refused. The groups before SANDBOX are what a Python service and the apps in
its grains need; SANDBOX is the whole grant on top of that, the calls Docker's default
profile keeps for CAP_SYS_ADMIN and grainmgr needs without any capability (in user
namespaces it owns). Each grain still gets grainmgr's own, much narrower filter, loaded last
inside the sandbox (docs/seccomp.md); this profile is the outer wall around grainmgr itself.

Run `python3 deploy/seccomp/gen_profile.py` after changing a group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "grainmgr.json"
ENOSYS = 38

GROUPS: tuple[tuple[str, str], ...] = (
    (
        "files and descriptors",
        "read write open openat openat2 close close_range creat lseek pread64 pwrite64 readv "
        "writev preadv pwritev preadv2 pwritev2 sendfile splice tee vmsplice copy_file_range "
        "dup dup2 dup3 fcntl flock fsync fdatasync sync syncfs sync_file_range truncate "
        "ftruncate fallocate fadvise64 readahead stat fstat lstat newfstatat statx statfs "
        "fstatfs access faccessat faccessat2 getdents getdents64 getcwd chdir fchdir rename "
        "renameat renameat2 mkdir mkdirat rmdir link linkat unlink unlinkat symlink symlinkat "
        "readlink readlinkat chmod fchmod fchmodat chown fchown lchown fchownat umask utime "
        "utimes utimensat futimesat mknod mknodat getxattr lgetxattr fgetxattr setxattr "
        "lsetxattr fsetxattr listxattr llistxattr flistxattr removexattr lremovexattr "
        "fremovexattr inotify_init inotify_init1 inotify_add_watch inotify_rm_watch memfd_create "
        "ioctl",
    ),
    (
        "waiting and events",
        "pipe pipe2 select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_wait "
        "epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 timerfd_create "
        "timerfd_settime timerfd_gettime io_setup io_destroy io_submit io_getevents io_cancel "
        "io_pgetevents",
    ),
    (
        "memory",
        "brk mmap munmap mremap mprotect madvise mlock mlock2 munlock mlockall munlockall "
        "mincore msync membarrier pkey_alloc pkey_free pkey_mprotect get_mempolicy "
        "set_mempolicy",
    ),
    (
        "processes and threads",
        "clone clone3 fork vfork execve execveat exit exit_group wait4 waitid kill tkill tgkill "
        "getpid getppid gettid getpgid setpgid getpgrp getsid setsid getuid geteuid getgid "
        "getegid getresuid getresgid getgroups setuid setgid setreuid setregid setresuid "
        "setresgid setgroups setfsuid setfsgid capget capset prctl arch_prctl set_tid_address "
        "set_robust_list get_robust_list futex futex_waitv rseq sched_yield sched_getaffinity "
        "sched_setaffinity sched_getparam sched_setparam sched_getscheduler sched_setscheduler "
        "sched_get_priority_max sched_get_priority_min sched_rr_get_interval sched_getattr "
        "sched_setattr getpriority setpriority getrlimit setrlimit prlimit64 getrusage times "
        "uname sysinfo personality ioprio_get ioprio_set getcpu restart_syscall pidfd_open "
        "pidfd_send_signal getrandom",
    ),
    (
        "signals and time",
        "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait "
        "rt_sigqueueinfo rt_tgsigqueueinfo rt_sigsuspend sigaltstack pause alarm getitimer "
        "setitimer clock_gettime clock_getres clock_nanosleep nanosleep gettimeofday time "
        "timer_create timer_settime timer_gettime timer_getoverrun timer_delete",
    ),
    (
        "sockets",
        "socket socketpair bind listen accept accept4 connect getsockname getpeername sendto "
        "recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt",
    ),
    (
        "System V and POSIX IPC (namespaced per grain by its ipc namespace)",
        "shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl "
        "mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr",
    ),
)

# The grant: what grainmgr needs to build a sandbox without any capability.
SANDBOX = (
    "sandbox: namespaces, the grain's mount tree, seccomp and Landlock",
    "unshare setns mount umount2 pivot_root chroot sethostname setdomainname mount_setattr "
    "open_tree move_mount fsopen fsconfig fsmount fspick seccomp landlock_create_ruleset "
    "landlock_add_rule landlock_restrict_self",
)

# Never allowed, whatever a later edit of a group says (the test checks it).
_REFUSED_WORDS = (
    "bpf perf_event_open ptrace process_vm_readv process_vm_writev kexec_load kexec_file_load "
    "init_module finit_module delete_module open_by_handle_at name_to_handle_at keyctl add_key "
    "request_key userfaultfd iopl ioperm swapon swapoff reboot acct settimeofday clock_settime "
    "clock_adjtime adjtimex syslog quotactl lookup_dcookie vhangup nfsservctl io_uring_setup "
    "io_uring_enter io_uring_register fanotify_init kcmp mbind migrate_pages move_pages "
    "pidfd_getfd process_madvise"
)
REFUSED = frozenset(_REFUSED_WORDS.split())


def profile() -> dict[str, object]:
    groups = (*GROUPS, SANDBOX)
    allowed = [name for _, names in groups for name in names.split()]
    clash = REFUSED.intersection(allowed)
    if clash:
        raise SystemExit(f"refused calls in an allowed group: {sorted(clash)}")
    if len(allowed) != len(set(allowed)):
        raise SystemExit("a call is listed twice")
    return {
        "comment": "Generated by deploy/seccomp/gen_profile.py; edit that file, not this one.",
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {"comment": title, "names": sorted(names.split()), "action": "SCMP_ACT_ALLOW"}
            for title, names in groups
        ],
    }


def render() -> str:
    return json.dumps(profile(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--check"]:
        return 0 if OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text else 1
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
