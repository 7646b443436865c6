"""The compiled grain seccomp program, checked by running it in a small BPF interpreter.

The integration tests load the same bytes into a real kernel; here every decision the
program makes is checked for every named call and for argument values the kernel would
see, quickly and without loading anything into this process.
"""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grainhouse_grainmgr import seccomp_compiler as compiler
from grainhouse_grainmgr import seccomp_loader as loader
from grainhouse_grainmgr import seccomp_policy as policy
from grainhouse_grainmgr import syscall_probe

pytestmark = pytest.mark.unit

ALLOW = 0x7FFF0000
AUDIT_ARCH_I386 = 0x40000003
REPO = Path(__file__).resolve().parents[3]


def errno_ret(number: int) -> int:
    return 0x00050000 | number


def run_bpf(
    program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = compiler.AUDIT_ARCH_X86_64
) -> int:
    """Evaluate the classic-BPF opcodes the compiler emits over a struct seccomp_data."""
    full = (*args, *(0,) * (6 - len(args)))
    data = struct.pack("<iIQ6Q", nr, arch, 0x401000, *full)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    for _ in range(len(insns) + 1):  # a forward-only program cannot take more steps
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # ld w abs
            assert k % 4 == 0 and k + 4 <= len(data)
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x15:  # jeq k
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x05:  # ja k
            pc += 1 + k
        elif code == 0x35:  # jge k
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x45:  # jset k
            pc += 1 + (jt if acc & k else jf)
        elif code == 0x54:  # and k
            acc &= k
            pc += 1
        elif code == 0x06:  # ret k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")
    raise AssertionError("the program did not return")


@pytest.fixture(scope="module")
def program() -> bytes:
    return compiler.compile_filter()


@pytest.fixture(scope="module")
def numbers() -> dict[str, int]:
    return compiler.syscall_numbers()


def test_compile_is_deterministic_and_well_formed(program: bytes) -> None:
    compiler.compile_filter.cache_clear()
    again = compiler.compile_filter()
    assert again == program
    assert len(program) % 8 == 0
    assert 0 < len(program) // 8 <= 4096
    # It must start by checking the architecture, before anything reads the number.
    assert struct.unpack_from("=HBBI", program, 0) == (0x20, 0, 0, 4)


def test_every_allowed_call_is_allowed_whatever_its_arguments(
    program: bytes, numbers: dict[str, int]
) -> None:
    junk = (0xFFFFFFFFFFFFFFFF, 0x5412, 0x10000000, 3, 7, 9)
    for group in policy.ALLOWED:
        for name in group.syscalls:
            assert run_bpf(program, numbers[name]) == ALLOW, name
            assert run_bpf(program, numbers[name], junk) == ALLOW, name


def test_privileged_calls_answer_eperm(program: bytes, numbers: dict[str, int]) -> None:
    for group in policy.PRIVILEGED:
        for name in group.syscalls:
            assert run_bpf(program, numbers[name]) == errno_ret(errno.EPERM), name


def test_not_provided_and_unknown_calls_answer_enosys(
    program: bytes, numbers: dict[str, int]
) -> None:
    for group in policy.NOT_PROVIDED:
        for name in group.syscalls:
            assert run_bpf(program, numbers[name]) == errno_ret(errno.ENOSYS), name
    named = set(numbers.values())
    for nr in [*range(0, 600), 1000, 0x3FFFFFFF, 0x7FFFFFFF, -1]:
        if nr not in named:
            assert run_bpf(program, nr) == errno_ret(errno.ENOSYS), nr


def test_foreign_architectures_answer_enosys(program: bytes, numbers: dict[str, int]) -> None:
    # i386 getpid is 20 (x86-64 getpid is 39): whatever the number, a foreign ABI is refused.
    for nr in (20, numbers["getpid"], numbers["read"], 0):
        assert run_bpf(program, nr, arch=AUDIT_ARCH_I386) == errno_ret(errno.ENOSYS)
        assert run_bpf(program, nr, arch=0xC00000B7) == errno_ret(errno.ENOSYS)  # aarch64
    # x32 numbers carry bit 30 and come in through the x86-64 entry point.
    for name in ("getpid", "read", "clone", "ioctl", "mount"):
        nr = compiler.X32_SYSCALL_BIT | numbers[name]
        assert run_bpf(program, nr) == errno_ret(errno.ENOSYS), name


@pytest.mark.parametrize("flag", [0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000,
                                  0x20000000, 0x40000000])  # fmt: skip
def test_clone_with_a_namespace_flag_answers_eperm(
    program: bytes, numbers: dict[str, int], flag: int
) -> None:
    fork_flags = 0x01200011  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD, as glibc
    for flags in (flag, fork_flags | flag, (0xDEADBEEF << 32) | flag):
        assert run_bpf(program, numbers["clone"], (flags,)) == errno_ret(errno.EPERM)


def test_clone_without_namespace_flags_is_allowed(program: bytes, numbers: dict[str, int]) -> None:
    thread_flags = 0x003D0F00  # what glibc's pthread_create passes to clone
    for flags in (0x11, 0x01200011, thread_flags, 0x4111, (0xFFFFFFFF << 32) | 0x11):
        assert run_bpf(program, numbers["clone"], (flags,)) == ALLOW


@given(high=st.integers(0, 0xFFFFFFFF), request=st.integers(0, 0xFFFFFFFF))
@settings(max_examples=400, deadline=None)
def test_ioctl_decision_depends_on_the_low_32_bits_only(
    program: bytes, numbers: dict[str, int], high: int, request: int
) -> None:
    got = run_bpf(program, numbers["ioctl"], (1, (high << 32) | request))
    refused = request in (policy.TIOCSTI, policy.TIOCLINUX)
    assert got == (errno_ret(errno.EPERM) if refused else ALLOW)


def test_ioctl_terminal_injection_with_junk_is_refused(
    program: bytes, numbers: dict[str, int]
) -> None:
    for request in (0x5412, 0x541C):
        for high in (0, 1, 0xFFFFFFFF, 0x80000000):
            got = run_bpf(program, numbers["ioctl"], (0, (high << 32) | request))
            assert got == errno_ret(errno.EPERM)


@pytest.mark.parametrize(
    ("domain", "type_", "want"),
    [
        (1, 1, ALLOW),  # AF_UNIX stream
        (1, 5 | 0o2000000, ALLOW),  # AF_UNIX seqpacket, SOCK_CLOEXEC
        (2, 1, ALLOW),  # AF_INET stream
        (2, 2 | 0o4000, ALLOW),  # AF_INET dgram, SOCK_NONBLOCK
        (10, 1 | 0o2000000, ALLOW),  # AF_INET6 stream
        (2, 3, errno_ret(errno.EPERM)),  # AF_INET raw
        (2, 3 | 0o2000000 | 0o4000, errno_ret(errno.EPERM)),  # raw with flags
        (10, 3, errno_ret(errno.EPERM)),  # AF_INET6 raw
        (2, 10, errno_ret(errno.EPERM)),  # AF_INET SOCK_PACKET
        (16, 3, errno_ret(errno.EAFNOSUPPORT)),  # AF_NETLINK
        (16, 2, errno_ret(errno.EAFNOSUPPORT)),
        (17, 3, errno_ret(errno.EAFNOSUPPORT)),  # AF_PACKET
        (0, 1, errno_ret(errno.EAFNOSUPPORT)),
        (40, 1, errno_ret(errno.EAFNOSUPPORT)),  # AF_VSOCK
        ((1 << 32) | 16, 3, errno_ret(errno.EAFNOSUPPORT)),  # junk above a netlink domain
        ((7 << 32) | 2, (9 << 32) | 3, errno_ret(errno.EPERM)),  # junk above inet raw
    ],
)
def test_socket_families_and_types(
    program: bytes, numbers: dict[str, int], domain: int, type_: int, want: int
) -> None:
    assert run_bpf(program, numbers["socket"], (domain, type_, 0)) == want
    assert run_bpf(program, numbers["socketpair"], (domain, type_, 0, 0)) == want


def test_personality_allows_only_the_query_and_per_linux(
    program: bytes, numbers: dict[str, int]
) -> None:
    nr = numbers["personality"]
    assert run_bpf(program, nr, (0xFFFFFFFF,)) == ALLOW
    assert run_bpf(program, nr, ((0xAB << 32) | 0xFFFFFFFF,)) == ALLOW  # kernel truncates
    assert run_bpf(program, nr, (0,)) == ALLOW
    for persona in (0x0040000, 0x0400000, 0x0008, 0x0020000):
        assert run_bpf(program, nr, (persona,)) == errno_ret(errno.EPERM)


def test_probe_numbers_match_libseccomp(numbers: dict[str, int]) -> None:
    # The in-grain probe carries its own numbers (it imports nothing); they must be right.
    for name, nr in syscall_probe.NR.items():
        assert numbers[name] == nr, name


def test_probe_expectations_match_the_program(program: bytes, numbers: dict[str, int]) -> None:
    # The probe's promised errnos and the policy must tell the same story, call by call.
    simple = {
        name: name
        for name in syscall_probe.EXPECTED_UNDER_FILTER
        if name in numbers and compiler.decisions()[name] != "args"
    }
    assert len(simple) >= 15
    for probe, name in simple.items():
        want = syscall_probe.EXPECTED_UNDER_FILTER[probe]
        assert run_bpf(program, numbers[name]) == (errno_ret(want) if want else ALLOW), probe


def test_policy_groups_are_explained_and_disjoint() -> None:
    table = compiler.decisions()  # raises PolicyError on a name listed twice
    assert len(table) > 300
    for group in (*policy.ALLOWED, *policy.PRIVILEGED, *policy.NOT_PROVIDED):
        assert len(group.why) > 40, group.name
        assert group.syscalls, group.name
    for required in ("ptrace", "keyctl", "add_key", "request_key", "bpf", "userfaultfd",
                     "perf_event_open", "mount", "umount2", "pivot_root", "chroot", "unshare",
                     "setns", "open_by_handle_at", "kexec_load", "process_vm_readv",
                     "syslog"):  # fmt: skip
        assert table[required] == "EPERM", required
    for required in ("clone3", "io_uring_setup", "modify_ldt"):
        assert table[required] == "ENOSYS", required


def test_docs_cover_every_group_and_call() -> None:
    text = (REPO / "docs" / "seccomp.md").read_text()
    words = set(re.findall(r"[A-Za-z0-9_]+", text))
    for group in (*policy.ALLOWED, *policy.PRIVILEGED, *policy.NOT_PROVIDED):
        assert group.name in text, group.name
        missing = [name for name in group.syscalls if name not in words]
        assert not missing, f"docs/seccomp.md does not mention {missing}"
    for name in policy.ARGUMENT_RULES:
        assert name in words, name


@pytest.mark.parametrize("bad", [b"", b"\x00" * 7, b"\x00" * 12, b"\x06\x00\x00\x00" * 2 * 4097])
def test_install_rejects_malformed_programs_before_the_kernel(bad: bytes) -> None:
    with pytest.raises(ValueError):
        loader.install_filter(bad)


def test_a_foreign_host_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real thing cannot run here (this is an x86-64 machine), so pretend to be aarch64.
    compiler.compile_filter.cache_clear()
    monkeypatch.setattr(compiler.platform, "machine", lambda: "aarch64")
    try:
        with pytest.raises(policy.UnsupportedArchitectureError, match="aarch64"):
            compiler.compile_filter()
    finally:
        compiler.compile_filter.cache_clear()
