"""Checks a grain sandbox from inside and prints what it found, as JSON.

Owns: the list of sandbox properties checked from inside a grain, each with its detector.
Trusts: nothing; every check reports what the kernel answered. Hints about the host (a host
pid, a marker path, a listening port, ...) come from the environment the test sets.
Never: imports anything outside the standard library (it runs on Debian's /usr/bin/python3
inside the sandbox); harms the host when run there as a control (every attempt is harmless,
and fork tests are bounded).

Run: `/usr/bin/python3 probe.py` inside a grain (and on the host as the control run). Each
check yields {"ok": bool, "detail": str}; ok means "the sandbox property holds". Output goes
to the fd named by PROBE_OUT_FD (else stdout). The syscall checks come from the sibling
`syscall_probe.py` (the seccomp policy's own table of expected errnos) when it is present.
"""

# ruff: noqa: S108  (/tmp here is the grain's own private tmpfs, which is what we probe)
from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable

Result = dict[str, object]
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

EXPECTED_ROOT = {
    "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "sbin", "tmp",
    "usr", "var",
}  # fmt: skip
SETUID_BINARY = "/usr/bin/passwd"


def env_int(name: str, default: int = 0) -> int:
    return int(os.environ.get(name, default))


def result(ok: bool, detail: object = "") -> Result:
    return {"ok": bool(ok), "detail": str(detail)[:300]}


def errno_of(action: Callable[[], object]) -> int:
    """0 if `action` succeeded, else the errno it failed with."""
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def status_field(name: str, pid: str = "self") -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return ""


# -- identity and privileges -----------------------------------------------------------------


def check_uid() -> Result:
    ids = (os.getresuid(), os.getresgid())
    return result(ids == ((1000,) * 3, (1000,) * 3), ids)


def check_capabilities() -> Result:
    caps = {k: status_field(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    return result(all(int(v, 16) == 0 for v in caps.values()), caps)


def check_no_new_privs() -> Result:
    value = status_field("NoNewPrivs")
    return result(value == "1", value)


def check_seccomp() -> Result:
    value = status_field("Seccomp")
    return result(value == "2", value)


def check_setuid0() -> Result:
    err = errno_of(lambda: os.setuid(0))
    # EINVAL: uid 0 does not exist in the grain's user namespace; EPERM: no CAP_SETUID.
    return result(err in (errno.EPERM, errno.EINVAL), errno.errorcode.get(err, "succeeded"))


def check_setuid_binary() -> Result:
    """Run a setuid-root program and read its effective uid while it runs (or as a zombie)."""
    if not os.path.exists(SETUID_BINARY):
        return result(False, f"{SETUID_BINARY} missing")
    mode = os.stat(SETUID_BINARY).st_mode
    if not mode & stat.S_ISUID:
        return result(False, f"{SETUID_BINARY} is not setuid here")
    try:
        proc = subprocess.Popen(
            [SETUID_BINARY],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        return result(True, f"exec refused: {exc}")
    try:
        uids = status_field("Uid", str(proc.pid)).split()  # readable even as a zombie
    finally:
        proc.kill()
        proc.wait()
    return result(bool(uids) and uids[1] != "0" and uids[3] != "0", f"real/eff/saved/fs={uids}")


# -- what is visible --------------------------------------------------------------------------


def check_host_process() -> Result:
    host_pid = env_int("PROBE_HOST_PID")
    if not host_pid:
        return result(False, "PROBE_HOST_PID not set")
    err = errno_of(lambda: os.kill(host_pid, 0))
    return result(err == errno.ESRCH, errno.errorcode.get(err, "visible"))


def check_other_grain_process() -> Result:
    other = env_int("PROBE_OTHER_PID")
    if not other:
        return result(False, "PROBE_OTHER_PID not set")
    err = errno_of(lambda: os.kill(other, 0))
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return result(err == errno.ESRCH and len(pids) < 50, f"{errno.errorcode.get(err, 'visible')}")


def check_host_files() -> Result:
    markers = [p for p in os.environ.get("PROBE_HOST_MARKERS", "").split(":") if p]
    if not markers:
        return result(False, "PROBE_HOST_MARKERS not set")
    seen = [m for m in markers if os.path.lexists(m)]
    return result(not seen, f"visible: {seen}")


HOST_NAMES = ("home", "root", "work", "boot", "srv", "mnt", "media", "run", "sys", "snap")


def check_root_entries() -> Result:
    try:
        entries = set(os.listdir("/"))
    except PermissionError:
        # Landlock grants no right on "/" itself. Names still resolve (stat is not a
        # Landlock right), so look for the usual host entries, and check every mount point.
        present = [n for n in HOST_NAMES if os.path.lexists("/" + n)]
        with open("/proc/self/mountinfo") as f:
            tops = {line.split()[4].split("/")[1] for line in f} - {""}
        stray = sorted(set(present) | (tops - EXPECTED_ROOT))
        return result(not stray, f"listing refused (Landlock); unexpected: {stray}")
    return result(entries <= EXPECTED_ROOT, sorted(entries - EXPECTED_ROOT))


def _write_fails(path: str) -> Result:
    def attempt() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(path)

    err = errno_of(attempt)
    return result(
        err in (errno.EROFS, errno.EACCES, errno.EPERM), errno.errorcode.get(err, "wrote")
    )


def check_root_readonly() -> Result:
    return _write_fails("/probe-write-test")


def check_usr_readonly() -> Result:
    return _write_fails("/usr/probe-write-test")


def check_dev_readonly() -> Result:
    return _write_fails("/dev/probe-write-test")


def check_var_writable() -> Result:
    path = "/var/probe-write-test"

    def attempt() -> None:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)

    err = errno_of(attempt)
    return result(err == 0, errno.errorcode.get(err, "writable"))


def check_tmp_private() -> Result:
    entries = os.listdir("/tmp")
    return result(entries == [], entries[:10])


def check_tmp_limited() -> Result:
    limit = env_int("PROBE_TMP_LIMIT")
    if not limit:
        return result(False, "PROBE_TMP_LIMIT not set")
    path = "/tmp/probe-fill"
    written = 0
    chunk = b"\0" * (1 << 20)
    err = 0
    try:
        with open(path, "wb", buffering=0) as f:
            while written < limit * 2:
                f.write(chunk)
                written += len(chunk)
    except OSError as exc:
        err = exc.errno or -1
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return result(err == errno.ENOSPC and written <= limit, f"{written} bytes, errno {err}")


def check_no_mknod() -> Result:
    path = "/tmp/probe-null"
    err = errno_of(lambda: os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3)))
    if err == 0:
        os.unlink(path)
    return result(err in (errno.EPERM, errno.EACCES), errno.errorcode.get(err, "created"))


def check_proc_self_exe() -> Result:
    # ETXTBSY (the binary is running) does not count: a root process could still write it
    # once the process ends. What must stop us is the read-only mount or a permission.
    err = errno_of(lambda: os.close(os.open("/proc/self/exe", os.O_WRONLY)))
    return result(
        err in (errno.EROFS, errno.EACCES, errno.EPERM), errno.errorcode.get(err, "opened")
    )


def check_fds(listing: list[int]) -> Result:
    declared = {0, 1, 2} | {
        int(x) for x in os.environ.get("PROBE_DECLARED_FDS", "").split(",") if x
    }
    extra = sorted(set(listing) - declared)
    return result(not extra, f"undeclared: {extra}")


# -- network and IPC --------------------------------------------------------------------------


def check_interfaces() -> Result:
    # /proc/net/dev rather than if_nameindex: that one needs netlink, which seccomp refuses.
    with open("/proc/net/dev") as f:
        names = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    return result(names == ["lo"], names)


def check_outside_unreachable() -> Result:
    details = []
    ok = True
    for host, port in (("1.1.1.1", 80), ("10.0.0.1", 80)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            err = s.connect_ex((host, port))
        details.append(f"{host}:{errno.errorcode.get(err, err)}")
        ok = ok and err in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    port = env_int("PROBE_HOST_TCP_PORT")
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            err = s.connect_ex(("127.0.0.1", port))
        details.append(f"host port:{errno.errorcode.get(err, err)}")
        ok = ok and err == errno.ECONNREFUSED
    else:
        ok = False
    return result(ok, details)


def check_abstract_socket() -> Result:
    name = os.environ.get("PROBE_ABSTRACT")
    if not name:
        return result(False, "PROBE_ABSTRACT not set")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        err = s.connect_ex("\0" + name)
    return result(err in (errno.ECONNREFUSED, errno.EPERM), errno.errorcode.get(err, "connected"))


def check_sysv_ipc() -> Result:
    key = env_int("PROBE_SHM_KEY")
    if not key:
        return result(False, "PROBE_SHM_KEY not set")
    shmid = _libc.shmget(key, 0, 0)
    err = ctypes.get_errno() if shmid < 0 else 0
    return result(err == errno.ENOENT, errno.errorcode.get(err, f"found id {shmid}"))


# -- what must still work ---------------------------------------------------------------------


def check_threads() -> Result:
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    t.start()
    t.join(5)
    return result(len(box) == 1, box)


def check_fork_exec() -> Result:
    try:
        code = subprocess.run(["/bin/sh", "-c", "exit 7"], timeout=10).returncode
    except OSError as exc:
        return result(False, exc)
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    return result(code == 7 and os.waitstatus_to_exitcode(status) == 5, f"sh={code} fork={status}")


def check_memory_limit() -> Result:
    limit = env_int("PROBE_MEM_LIMIT")
    if not limit:
        return result(False, "PROBE_MEM_LIMIT not set")
    pid = os.fork()
    if pid == 0:
        try:
            blocks = []
            for _ in range(2 * limit // (16 << 20) + 2):
                blocks.append(b"\1" * (16 << 20))  # touched pages, not just reserved
        except MemoryError:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return result(True, "killed")
    code = os.waitstatus_to_exitcode(status)
    return result(code == 3, "MemoryError" if code == 3 else f"allocated 2x the limit ({code})")


def check_pids_limit() -> Result:
    limit = env_int("PROBE_PIDS_LIMIT")
    if not limit:
        return result(False, "PROBE_PIDS_LIMIT not set")
    read_end, write_end = os.pipe()
    children: list[int] = []
    err = 0
    try:
        for _ in range(limit + 10):  # bounded: a control run on the host must not fork-bomb
            try:
                pid = os.fork()
            except OSError as exc:
                err = exc.errno or -1
                break
            if pid == 0:
                os.close(write_end)
                os.read(read_end, 1)
                os._exit(0)
            children.append(pid)
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in children:
            os.waitpid(pid, 0)
    return result(err == errno.EAGAIN and len(children) < limit, f"{len(children)} forks, {err}")


def syscall_checks() -> dict[str, Result]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import syscall_probe  # sibling file in the package, stdlib only
    except ImportError:
        return {"syscalls": result(False, "syscall_probe.py not next to probe.py")}
    out: dict[str, Result] = {}
    for name, got in syscall_probe.run([]).items():
        want = syscall_probe.EXPECTED_UNDER_FILTER[name]
        out[f"syscall_{name}"] = result(
            got["errno"] == want,
            f"want {errno.errorcode.get(want, want)} got {errno.errorcode.get(got['errno'], 0)}",
        )
    return out


CHECKS: dict[str, Callable[[], Result]] = {
    "uid_1000": check_uid,
    "no_capabilities": check_capabilities,
    "no_new_privs": check_no_new_privs,
    "seccomp_mode_2": check_seccomp,
    "setuid0_fails": check_setuid0,
    "setuid_binary_no_privilege": check_setuid_binary,
    "host_process_invisible": check_host_process,
    "other_grain_invisible": check_other_grain_process,
    "host_files_invisible": check_host_files,
    "root_only_expected_entries": check_root_entries,
    "root_readonly": check_root_readonly,
    "usr_readonly": check_usr_readonly,
    "dev_readonly": check_dev_readonly,
    "var_writable": check_var_writable,
    "tmp_private_empty": check_tmp_private,
    "tmp_full_below_limit": check_tmp_limited,
    "no_mknod": check_no_mknod,
    "proc_self_exe_not_writable": check_proc_self_exe,
    "only_loopback": check_interfaces,
    "outside_unreachable": check_outside_unreachable,
    "abstract_socket_unreachable": check_abstract_socket,
    "sysv_ipc_unreachable": check_sysv_ipc,
    "threads_work": check_threads,
    "fork_exec_work": check_fork_exec,
    "memory_limit_enforced": check_memory_limit,
    "pids_limit_enforced": check_pids_limit,
}


def main() -> int:
    fds = [int(fd) for fd in os.listdir("/proc/self/fd")]  # first: before we open anything
    listing_fd_closed = [fd for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")]
    out_fd = env_int("PROBE_OUT_FD", 1)
    started = time.monotonic()
    results: dict[str, Result] = {"inherited_fds_declared_only": check_fds(listing_fd_closed)}
    for name, check in CHECKS.items():
        try:
            results[name] = check()
        except Exception as exc:  # one broken detector must not hide the others
            results[name] = result(False, f"probe error: {type(exc).__name__}: {exc}")
    results.update(syscall_checks())
    results["_elapsed"] = result(True, f"{time.monotonic() - started:.2f}s")
    data = json.dumps(results, sort_keys=True).encode()
    while data:
        data = data[os.write(out_fd, data) :]
    return 0


if __name__ == "__main__":
    sys.exit(main())
