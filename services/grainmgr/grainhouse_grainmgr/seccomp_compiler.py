"""Compiles the grain's seccomp policy to one classic-BPF program, once, at grainmgr start.

Owns: the mechanism: classic BPF over struct seccomp_data (the few opcodes, offsets and
return actions it emits), the argument rules' instruction blocks, the binary search over
system-call numbers, and the check that the policy is consistent (`decisions`).
Trusts: `seccomp_policy` for every decision; libseccomp's table of x86-64 system-call
numbers, read once by `compile_filter` when grainmgr starts (by soname: no `find_library`,
which forks `ldconfig`).
Never: adds a decision of its own (each argument block encodes a rule that
`seccomp_policy.ARGUMENT_RULES` states, and `decisions` refuses one without the other); runs
in the fork server's children (only the bytes it returns travel there); imports anything
outside the standard library.

Usage: `program = compile_filter()` once at start; `seccomp_loader.install_filter(program)`
last, right before exec (see `seccomp_policy` for how the program decides).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from grainhouse_grainmgr.seccomp_loader import BPF_MAXINSNS, SOCK_FILTER
from grainhouse_grainmgr.seccomp_policy import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    ALLOWED,
    ARGUMENT_RULES,
    CLONE_NAMESPACE_FLAGS,
    NOT_PROVIDED,
    PER_LINUX,
    PERSONALITY_QUERY,
    PRIVILEGED,
    SOCK_PACKET,
    SOCK_RAW,
    SOCK_TYPE_MASK,
    TIOCLINUX,
    TIOCSTI,
    PolicyError,
    UnsupportedArchitectureError,
)

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

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
    return b"".join(SOCK_FILTER.pack(*insn) for insn in _emit(decided, numbers))
