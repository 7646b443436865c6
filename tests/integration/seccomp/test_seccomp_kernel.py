"""The grain seccomp filter loaded into a real kernel: refusals with exact errnos, and the
workloads a grain runs (threads, fork/exec, asyncio, uvicorn, two Pythons) still working."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from grainhouse_grainmgr import seccomp_compiler
from grainhouse_grainmgr.syscall_probe import EXPECTED_UNDER_FILTER, KERNEL_EPERM_WITHOUT_ROOT

pytestmark = pytest.mark.integration

# The shapes of the conftest fixtures (not imported: several test folders have a conftest).
ProbeRunner = Callable[[str, bool], dict[str, int]]
FilteredRunner = Callable[..., subprocess.CompletedProcess[str]]

REFUSED = sorted(name for name, want in EXPECTED_UNDER_FILTER.items() if want)
GOES_THROUGH = sorted(name for name, want in EXPECTED_UNDER_FILTER.items() if not want)

# Reports the seccomp mode of the process itself, so a workload proves the filter was on.
MODE = """
def seccomp_mode():
    with open("/proc/self/status") as f:
        return dict(l.split(":", 1) for l in f if l.startswith("Seccomp"))["Seccomp"].strip()
"""


@pytest.mark.parametrize("name", REFUSED)
def test_refused_with_the_chosen_errno(run_probe: ProbeRunner, name: str) -> None:
    got = run_probe(name, True)
    assert got["ret"] == -1, got
    assert got["errno"] == EXPECTED_UNDER_FILTER[name], errno.errorcode.get(got["errno"])


@pytest.mark.parametrize("name", REFUSED)
def test_without_the_filter_the_kernel_answers_differently(
    run_probe: ProbeRunner, name: str
) -> None:
    want = EXPECTED_UNDER_FILTER[name]
    got = run_probe(name, False)
    if got["errno"] == want:
        if name == "x32_getpid":
            pytest.skip("this kernel has no x32 ABI, so it answers ENOSYS itself")
        if os.geteuid() != 0 and name in KERNEL_EPERM_WITHOUT_ROOT:
            pytest.skip("without root the kernel itself answers EPERM before reading arguments")
    assert got["errno"] != want, f"the kernel alone already answers {errno.errorcode[want]}"
    if name == "int80_getpid":
        assert got["ret"] == got["pid"], "int 0x80 getpid should work without the filter"


@pytest.mark.parametrize("name", GOES_THROUGH)
def test_allowed_probes_go_through(run_probe: ProbeRunner, name: str) -> None:
    got = run_probe(name, True)
    assert got["errno"] == 0, errno.errorcode.get(got["errno"])
    assert got["ret"] >= 0
    if name == "personality_query":
        assert got["ret"] == run_probe(name, False)["ret"]


def run_python(run_filtered: FilteredRunner, python: str, body: str) -> dict[str, object]:
    done = run_filtered([python, "-I", "-c", MODE + body])
    assert done.returncode == 0, done.stderr
    facts: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts.pop("seccomp") == "2", "the workload did not run under the filter"
    return facts


THREADS = """
import json, threading
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(8) as pool:
    total = sum(pool.map(lambda i: sum(range(i * 1000)), range(32)))
barrier = threading.Barrier(4)
workers = [threading.Thread(target=barrier.wait) for _ in range(3)]
for w in workers:
    w.start()
barrier.wait()
for w in workers:
    w.join()
print(json.dumps({"seccomp": seccomp_mode(), "total": total, "alive": threading.active_count()}))
"""


def test_threads_work(run_filtered: FilteredRunner) -> None:
    facts = run_python(run_filtered, sys.executable, THREADS)
    assert facts == {"total": sum(sum(range(i * 1000)) for i in range(32)), "alive": 1}


FORK_EXEC = """
import json, os, subprocess
true_rc = subprocess.run(["/bin/true"]).returncode
sh = subprocess.run(["/bin/sh", "-c", "echo $((6 * 7))"], capture_output=True, text=True).stdout
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
print(json.dumps({"seccomp": seccomp_mode(), "true": true_rc, "sh": sh.strip(),
                  "child": os.waitstatus_to_exitcode(status)}))
"""


def test_fork_and_exec_work(run_filtered: FilteredRunner) -> None:
    facts = run_python(run_filtered, sys.executable, FORK_EXEC)
    assert facts == {"true": 0, "sh": "42", "child": 7}


ASYNCIO_TCP = """
import asyncio, json, socket
async def handle(reader, writer):
    writer.write((await reader.readline()).upper())
    await writer.drain()
    writer.close()
async def round_trip(family, host):
    server = await asyncio.start_server(handle, host, 0, family=family)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"hello grain\\n")
    await writer.drain()
    reply = await reader.readline()
    writer.close()
    server.close()
    await server.wait_closed()
    return reply.decode().strip()
async def main():
    v4 = await round_trip(socket.AF_INET, "127.0.0.1")
    try:
        v6 = await round_trip(socket.AF_INET6, "::1")
    except OSError:
        v6 = "HELLO GRAIN"  # a host without IPv6 loopback is not the filter's doing
    proc = await asyncio.create_subprocess_exec("/bin/echo", "spawned",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    a, b = socket.socketpair()
    a.sendall(b"pair")
    pair = b.recv(4).decode()
    return {"v4": v4, "v6": v6, "spawned": out.decode().strip(), "pair": pair}
facts = asyncio.run(main())
facts["seccomp"] = seccomp_mode()
print(json.dumps(facts))
"""


def test_asyncio_tcp_server_and_client_work(run_filtered: FilteredRunner) -> None:
    facts = run_python(run_filtered, sys.executable, ASYNCIO_TCP)
    assert facts == {"v4": "HELLO GRAIN", "v6": "HELLO GRAIN", "spawned": "spawned",
                     "pair": "pair"}  # fmt: skip


FILES = """
import json, mmap, os, sys
root = sys.argv[1]
path = os.path.join(root, "a.txt")
with open(path, "w") as f:
    f.write("grain data")
os.rename(path, os.path.join(root, "b.txt"))
os.mkdir(os.path.join(root, "d"))
os.symlink("b.txt", os.path.join(root, "link"))
os.mkfifo(os.path.join(root, "fifo"))
with open(os.path.join(root, "link")) as f:
    text = f.read()
with open(os.path.join(root, "b.txt"), "rb") as f:
    with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        mapped = m[:5].decode()
with open("/etc/passwd") as f:
    passwd = f.readline().startswith("root:")
size = os.stat(os.path.join(root, "b.txt")).st_size
print(json.dumps({"seccomp": seccomp_mode(), "text": text, "mapped": mapped, "passwd": passwd,
                  "names": sorted(os.listdir(root)), "size": size}))
"""


def test_reading_and_writing_files_works(run_filtered: FilteredRunner, tmp_path: Path) -> None:
    done = run_filtered([sys.executable, "-I", "-c", MODE + FILES, str(tmp_path)])
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts == {"seccomp": "2", "text": "grain data", "mapped": "grain", "passwd": True,
                     "names": ["b.txt", "d", "fifo", "link"], "size": 10}  # fmt: skip


INTERPRETER = """
import asyncio, hashlib, json, multiprocessing, sqlite3, ssl, subprocess, sys, tempfile
db = sqlite3.connect(":memory:")
db.execute("create table t (x)")
db.executemany("insert into t values (?)", [(i,) for i in range(100)])
with tempfile.TemporaryDirectory() as d:
    disk = sqlite3.connect(d + "/wal.db")
    disk.execute("pragma journal_mode=wal")
    disk.execute("create table t (x)")
    disk.commit()
    disk.close()
ctx = ssl.create_default_context()
with multiprocessing.get_context("fork").Pool(2) as pool:
    squares = pool.map(abs, [-1, -2, -3])
total = db.execute("select sum(x) from t").fetchone()[0]
print(json.dumps({"seccomp": seccomp_mode(), "sum": total,
                  "sha": hashlib.sha256(b"grain").hexdigest()[:8], "squares": squares,
                  "echo": subprocess.run(["/bin/echo", "x"], capture_output=True).stdout.decode(),
                  "version": sys.version_info[0]}))
"""


def interpreters() -> list[str]:
    found = ["/usr/bin/python3", str(Path(sys.base_prefix) / "bin" / "python3")]
    return sorted({p for p in found if os.path.exists(p)})


@pytest.mark.parametrize("python", interpreters())
def test_python_interpreters_run_under_the_filter(
    run_filtered: FilteredRunner, python: str
) -> None:
    facts = run_python(run_filtered, python, INTERPRETER)
    sha = hashlib.sha256(b"grain").hexdigest()[:8]
    assert facts == {"sum": 4950, "sha": sha, "squares": [1, 2, 3], "echo": "x\n", "version": 3}


UVICORN = """
import asyncio, json, uvicorn, uvloop
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"8")]})
    await send({"type": "http.response.body", "body": b"grain ok"})
async def main():
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http="httptools", lifespan="off",
                            log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\\r\\nHost: grain\\r\\nConnection: close\\r\\n\\r\\n")
    await writer.drain()
    response = await reader.read()
    writer.close()
    server.should_exit = True
    await task
    return response.decode(), type(asyncio.get_running_loop()).__module__
loop = uvloop.new_event_loop()
response, loop_module = loop.run_until_complete(main())
print(json.dumps({"seccomp": seccomp_mode(), "loop": loop_module,
                  "status": response.split("\\r\\n")[0],
                  "body": response.split("\\r\\n\\r\\n", 1)[1]}))
"""


def test_uvicorn_on_uvloop_serves_http(run_filtered: FilteredRunner) -> None:
    done = run_filtered([sys.executable, "-c", MODE + UVICORN])
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts == {"seccomp": "2", "loop": "uvloop", "status": "HTTP/1.1 200 OK",
                     "body": "grain ok"}  # fmt: skip


def test_install_cost_is_reported(run_filtered: FilteredRunner) -> None:
    # Printed, not asserted: timings on a shared 2-core CI machine are noise.
    seccomp_compiler.compile_filter.cache_clear()
    started = time.perf_counter()
    program = seccomp_compiler.compile_filter()
    compile_ms = (time.perf_counter() - started) * 1e3
    done = run_filtered(["/bin/true"])
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("install_filter took"))
    print(f"\ncompile_filter: {compile_ms:.1f} ms, {len(program) // 8} instructions; {line}")
