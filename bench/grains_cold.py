"""Grains bench, part 2: the cold open (a stopped grain's first byte through the frontend, set
against the app's bare start), and the pieces the other parts share with it.

Owns: the cold-open figures (`cold_open`'s JSON keys, COLD_STEPS and their meaning, the goal
COLD_GOAL_MS); the hello app started bare outside any sandbox (the baseline the warm run uses
too); timing one request to its first byte; the few REST calls the bench makes on a grain.
Trusts: grainmgr's one "start steps" line per cold start (running.steps_line, read from
grainmgr.log, stamped with the same monotonic clock as ours); the repo root on sys.path
(bench_grains.py puts it there) for tests.support.ports.
Never: starts or stops the platform (bench_grains.py does); writes to stdout (the bench's JSON);
imports bench_grains (it imports this).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.integration.frontend.harness import Client
    from tests.support.stack import Stack

GRAIN_PYTHON = "/usr/bin/python3"
COLD_GOAL_MS = 20.0


def say(*what: object) -> None:
    print("bench_grains:", *what, file=sys.stderr, flush=True)


# -- the hello app started bare -------------------------------------------------------------


def free_port() -> int:
    """Below the ephemeral range, as the tests pick (tests/support/ports.py says why)."""
    from tests.support.ports import free_port as planned

    return planned()


def start_direct(hello_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The hello app as the grain runs it (same interpreter, same site-packages), unsandboxed."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(hello_dir),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(hello_dir / "site-packages"),
    }
    argv = [GRAIN_PYTHON, "-m", "uvicorn", "--app-dir", str(hello_dir), "app:app",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, start_new_session=True)


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- one HTTP request, timed to its first byte ----------------------------------------------


def first_byte(port: int, host: str, path: str, headers: dict[str, str], deadline: float) -> float:
    """Seconds from sending a GET to its first response byte; dials until `deadline` while
    the port refuses (the bare start's case). Raises unless the status is 200."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{head}Connection: close\r\n\r\n".encode()
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except ConnectionRefusedError:
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.0005)
    with sock:
        t0 = time.perf_counter()
        sock.sendall(request)
        first = sock.recv(1)
        took = time.perf_counter() - t0
        rest = first
        while b"\r\n" not in rest:
            more = sock.recv(4096)
            if not more:
                break
            rest += more
    if not rest.startswith(b"HTTP/1.1 200"):
        line = rest.split(b"\r\n")[0]
        raise RuntimeError(f"status line {line!r}")
    return took


def bare_start_ms(hello_dir: Path) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = start_direct(hello_dir, port)
    try:
        first_byte(port, "127.0.0.1", "/", {}, time.perf_counter() + 30)
        return (time.perf_counter() - t0) * 1000
    finally:
        stop_proc(proc)


# -- the platform side ----------------------------------------------------------------------


def wait_state(api: Client, grain_id: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.api("GET", f"/grains/{grain_id}").json()["state"] == state:
            return
        time.sleep(0.05)
    raise RuntimeError(f"grain {grain_id} not {state} after {timeout}s")


def new_grain(api: Client, app_id: str, title: str) -> str:
    made = api.api("POST", "/grains", {"app_id": app_id, "title": title})
    if made.status != 201:
        raise RuntimeError(f"create grain: {made.status} {made.text[:200]}")
    return str(made.json()["id"])


def grain_token(api: Client, grain_id: str) -> tuple[str, str]:
    made = api.api("POST", f"/grains/{grain_id}/api-tokens", {"role": "viewer", "label": "bench"})
    if made.status != 201:
        raise RuntimeError(f"api token: {made.status} {made.text[:200]}")
    return str(made.json()["token"]), str(made.json()["api_url"])


# -- cold open ------------------------------------------------------------------------------


# The steps of a cold open, in order: (name, where it ends). grainmgr logs one "start steps"
# line per cold start with its own stamps (running.STEP_NAMES); the bench adds the ends it sees.
COLD_STEPS = (
    ("frontend_to_grainmgr", "grainmgr's OpenSession begins (frontend: auth, routing, gRPC)"),
    ("checks", "grainmgr read the grain and its package, ready to spawn"),
    ("sandbox", "the fork server built the sandbox; bridge and app exec'd"),
    ("app_start", "the app listens and the bridge said so (the app's own start is most of it)"),
    ("record", "grainmgr marks the grain ready (its state write overlaps the next step)"),
    ("session", "session opened on the bridge, relay ticket issued"),
    ("to_first_byte", "OpenSession reply, relay handshake, request to the app, its first byte"),
)


def start_steps(stack: Stack, grain_id: str) -> dict[str, float]:
    """grainmgr's last "start steps" line for this grain: at (monotonic s) and ms stamps."""
    found = ""
    log_file = stack.data_dir / "logs" / "grainmgr.log"
    for line in log_file.read_text(errors="replace").splitlines():
        if f"start steps {grain_id} " in line:
            found = line
    if not found:
        raise RuntimeError("grainmgr logged no start steps for the cold open")
    text = json.loads(found)["msg"] if found.startswith("{") else found
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split()[3:])}


def cold_steps(sent: float, done: float, marks: dict[str, float]) -> dict[str, float]:
    """Milliseconds per step of one cold open (`sent`/`done`: this process's monotonic clock,
    the same clock as grainmgr's stamps on Linux)."""
    at = marks["at"]
    ends = [
        (at - sent) * 1000,
        marks["checked"],
        marks["spawned"],
        marks["listening"],
        marks["ready"],
        marks["session"],
    ]
    ends = [ends[0]] + [ends[0] + e for e in ends[1:]] + [(done - sent) * 1000]
    steps, before = {}, 0.0
    for (name, _), end in zip(COLD_STEPS, ends, strict=True):
        steps[name] = end - before
        before = end
    return steps


def cold_open(
    stack: Stack, api: Client, grain: str, hello_dir: Path, rounds: int
) -> dict[str, Any]:
    token, api_url = grain_token(api, grain)
    front_port = int(stack.url.rsplit(":", 1)[1])
    headers = {"Host": api_url.split("/")[2], "Authorization": f"Bearer {token}"}
    first_byte(front_port, headers["Host"], "/", headers, time.perf_counter() + 60)
    cold, bare, steps = [], [], []
    for i in range(rounds):
        stopped = api.api("POST", f"/grains/{grain}/stop")
        if stopped.status >= 300:
            raise RuntimeError(f"stop: {stopped.status} {stopped.text[:200]}")
        wait_state(api, grain, "stopped")
        sent = time.perf_counter()  # CLOCK_MONOTONIC on Linux, as grainmgr's time.monotonic()
        cold.append(first_byte(front_port, headers["Host"], "/", headers, 0) * 1000)
        time.sleep(0.2)  # the log line is written before the reply; let it reach the file
        steps.append(cold_steps(sent, sent + cold[-1] / 1000, start_steps(stack, grain)))
        bare.append(bare_start_ms(hello_dir))
        say(f"cold open {i + 1}/{rounds}: {cold[-1]:.1f} ms, bare start {bare[-1]:.1f} ms")
    added = [c - b for c, b in zip(cold, bare, strict=True)]
    app_vs_bare = [s["app_start"] - b for s, b in zip(steps, bare, strict=True)]
    return {
        "rounds": rounds,
        "cold_open_ms_p50": round(statistics.median(cold), 1),
        "bare_start_ms_p50": round(statistics.median(bare), 1),
        "added_ms_p50": round(statistics.median(cold) - statistics.median(bare), 1),
        # The same, paired: the median of each round's cold open minus that round's bare start
        # (the two run back to back, so a noisy neighbour hits both alike).
        "added_ms_p50_paired": round(statistics.median(added), 1),
        "added_ms_each": [round(a, 1) for a in added],
        "ratio_cold_vs_bare": round(statistics.median(cold) / statistics.median(bare), 2),
        "goal_added_ms_p50_max": COLD_GOAL_MS,
        # Where the time goes (medians per step; they need not add up to the cold p50).
        "steps_ms_p50": {
            name: round(statistics.median(s[name] for s in steps), 1) for name, _ in COLD_STEPS
        },
        "steps": {name: what for name, what in COLD_STEPS},
        # The app's start inside the grain against its bare start in the same round: what
        # the sandbox and the bridge starting next to it cost the app itself.
        "app_start_minus_bare_ms_p50": round(statistics.median(app_vs_bare), 1),
        # Every step but the app's start, per round: what the platform adds around it. On a
        # busy machine far steadier than cold minus bare (two noisy figures).
        "platform_ms_p50": round(
            statistics.median(sum(v for k, v in s.items() if k != "app_start") for s in steps), 1
        ),
    }
