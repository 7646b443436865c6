"""Benchmark: grain start-up through our fork server against bubblewrap, side by side.

Measures, interleaved in one run (medians and p90 of N rounds, milliseconds):
- `true`: spawn to exit of /bin/true (and, for ours, spawn to successful exec);
- `http`: spawn to first HTTP response of a minimal Python server (Debian's
  /usr/bin/python3, http.server) that gets its listening socket as fd 3, as a grain does.
bwrap runs with an equivalent profile (all namespaces, uid 1000, the same read-only runtime,
package, storage, tmpfs /tmp, minimal /dev, fresh /proc, new session, no capabilities,
empty environment) plus the same seccomp program (`--seccomp`). Our side also pays for
the cgroup (mkdir, limits, rmdir), Landlock and the log pipe, which bwrap does not do.

Run as root: `python bench/bench_sandbox.py [--rounds N]`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grainhouse_grainmgr import seccomp_compiler
from grainhouse_grainmgr.launcher import Launcher, LauncherSettings, SpawnSpec

SERVER = """
import http.server, socket, sys
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hello, bind_and_activate=False)
server.socket.close()
server.socket = socket.socket(fileno=int(sys.argv[1]))
server.handle_request()
"""

SETTLE = 0.05  # seconds of quiet before each timed start
ETC_FILES = ("/etc/ld.so.cache", "/etc/nsswitch.conf", "/etc/mime.types")


def bwrap_argv(pkg: Path, var: Path, seccomp_fd: int, argv: list[str]) -> list[str]:
    cmd = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--uid", "1000",
        "--gid", "1000",
        "--die-with-parent",
        "--new-session",
        "--hostname", "sandbox",
        "--cap-drop", "ALL",
        "--clearenv",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/sbin", "/sbin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--ro-bind", str(pkg), "/opt/app",
        "--bind", str(var), "/var",
        "--size", str(64 << 20), "--tmpfs", "/tmp",
        "--dev", "/dev",
        "--proc", "/proc",
    ]  # fmt: skip
    for path in ETC_FILES:
        cmd += ["--ro-bind", path, path]
    if seccomp_fd >= 0:
        cmd += ["--seccomp", str(seccomp_fd)]
    return [*cmd, *argv]


def run_bwrap(
    pkg: Path, var: Path, program: bytes | None, argv: list[str], fds: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    seccomp_fd = -1
    pass_fds = list(fds)
    if program is not None:
        seccomp_fd = os.memfd_create("seccomp", 0)
        os.write(seccomp_fd, program)
        os.lseek(seccomp_fd, 0, os.SEEK_SET)
        pass_fds.append(seccomp_fd)
    proc = subprocess.Popen(
        bwrap_argv(pkg, var, seccomp_fd, argv),
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    if seccomp_fd >= 0:
        os.close(seccomp_fd)
    return proc


def http_listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def first_response(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200"), data
    return data


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
    }


async def bench(rounds: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="gh-bench-"))
    os.chmod(root, 0o755)
    pkg, var = root / "pkg", root / "var"
    pkg.mkdir()
    var.mkdir()
    (pkg / "server.py").write_text(SERVER)
    launcher = Launcher.start(LauncherSettings(allowed_roots=(str(root),), cgroup_name="gh-bench"))
    program = seccomp_compiler.compile_filter()
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "ours_true_exec", "ours_true_exit", "bwrap_seccomp_true_exit", "bwrap_true_exit",
            "ours_http", "bwrap_seccomp_http",
        )
    }  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        for i in range(rounds):
            # Settle between measurements: a cgroup v1 move (our spare refill after each spawn)
            # blocks every fork on the machine for an RCU grace period, bwrap's included.
            await asyncio.sleep(SETTLE)
            spec = SpawnSpec(f"b{i}", ["/bin/true"], {}, str(pkg), str(var), str(root / "log"))
            t0 = time.perf_counter()
            await launcher.spawn(spec)
            t1 = time.perf_counter()
            await launcher.wait(spec.grain_id)
            t2 = time.perf_counter()
            times["ours_true_exec"].append(t1 - t0)
            times["ours_true_exit"].append(t2 - t0)

            for key, prog in (("bwrap_seccomp_true_exit", program), ("bwrap_true_exit", None)):
                await asyncio.sleep(SETTLE)
                t0 = time.perf_counter()
                proc = run_bwrap(pkg, var, prog, ["/bin/true"], ())
                assert proc.wait() == 0
                times[key].append(time.perf_counter() - t0)

            await asyncio.sleep(SETTLE)
            listener = http_listener()
            port = listener.getsockname()[1]
            spec = SpawnSpec(
                f"h{i}",
                ["/usr/bin/python3", "/opt/app/server.py", "3"],
                {},
                str(pkg),
                str(var),
                str(root / "log"),
                pass_fds=(listener.fileno(),),
            )
            t0 = time.perf_counter()
            await launcher.spawn(spec)
            await loop.run_in_executor(None, first_response, port)
            times["ours_http"].append(time.perf_counter() - t0)
            await launcher.wait(spec.grain_id)
            listener.close()

            await asyncio.sleep(SETTLE)
            listener = http_listener()
            port = listener.getsockname()[1]
            fd = listener.fileno()  # bwrap passes fds through under the same number
            t0 = time.perf_counter()
            proc = run_bwrap(
                pkg, var, program, ["/usr/bin/python3", "/opt/app/server.py", str(fd)], (fd,)
            )
            await loop.run_in_executor(None, first_response, port)
            times["bwrap_seccomp_http"].append(time.perf_counter() - t0)
            proc.wait()
            listener.close()
    finally:
        launcher.close()
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, object] = {k: summary(v) for k, v in times.items()}
    ours_true = statistics.median(times["ours_true_exit"])
    ours_http = statistics.median(times["ours_http"])
    result["ratio_true_exit_vs_bwrap_seccomp"] = round(
        ours_true / statistics.median(times["bwrap_seccomp_true_exit"]), 3
    )
    result["ratio_http_vs_bwrap_seccomp"] = round(
        ours_http / statistics.median(times["bwrap_seccomp_http"]), 3
    )
    result["goal"] = "ours <= 1.2x bwrap+seccomp"
    result["rounds"] = rounds
    result["launcher"] = launcher.info
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        print(
            json.dumps(
                {"error": "run as root with bubblewrap installed (apt-get install bubblewrap)"}
            )
        )
        return 2
    print(json.dumps(asyncio.run(bench(args.rounds)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
