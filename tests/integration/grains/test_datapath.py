"""The data path: WebSockets both ways, 1 GiB both ways with flat memory, a flooding grain."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import is_grain_init

from .conftest import Platform, create, get, open_session, read_head, relay_connect, request_bytes

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]

GIB = 1024**3
MIB = 1024**2


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def bridge_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and is_grain_init(int(e))]


def ws_send(sock: socket.socket, payload: bytes) -> None:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    )
    sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def ws_recv(f: object) -> bytes:
    head = f.read(2)  # type: ignore[attr-defined]
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", f.read(2))[0]  # type: ignore[attr-defined]
    return f.read(n)  # type: ignore[attr-defined, no-any-return]


def test_websocket_messages_both_ways(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    with relay_connect(session.stream) as sock:
        sock.sendall(request_bytes("GET", "/ws", session, extra=upgrade))
        f = sock.makefile("rb")
        status, headers = read_head(f)
        assert status == 101
        assert headers["upgrade"].lower() == "websocket"
        assert ws_recv(f) == b"hello"  # server -> client unprompted
        for i in range(20):
            ws_send(sock, f"message {i}".encode())
            assert ws_recv(f) == f"echo:message {i}".encode()
        f.close()


def test_half_close_passes_through_both_relays(platform: Platform) -> None:
    """The client's EOF (after its request) reaches the app through grainmgr's relay and the
    bridge; the app answers, sees the EOF, closes: the client gets the answer, then EOF."""
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    with relay_connect(session.stream) as sock:
        sock.sendall(request_bytes("GET", "/whoami", session))
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert len(body) == length  # the whole answer, then EOF (recv returned b"")


def relayed_bytes(platform: Platform) -> dict[str, float]:
    assert platform.metrics_url, "the stack reports no metrics address for grainmgr"
    with urllib.request.urlopen(platform.metrics_url, timeout=10) as r:
        text = r.read().decode()
    return {
        s.labels["direction"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "grainhouse_grainmgr_relay_bytes_total"
    }


def test_relayed_bytes_are_counted_while_the_stream_stays_open(platform: Platform) -> None:
    """The relay sums bytes per stream and adds them to the counter in batches: a pooled
    keep-alive stream that never closes must still show up (within a poll, here)."""
    grain = create(platform, platform.probe)
    get(platform, grain.grain_id, "/whoami")  # started
    session = open_session(platform.stub, grain.grain_id)
    before = relayed_bytes(platform)
    with relay_connect(session.stream) as sock:
        raw = request_bytes("POST", "/upload", session, body_len=MIB) + b"u" * MIB
        sock.sendall(raw)
        with sock.makefile("rb") as f:
            status, headers = read_head(f)
            answer = f.read(int(headers["content-length"]))
        assert status == 200 and b'"bytes": 1048576' in answer
        deadline = time.monotonic() + 30
        while True:  # the stream is still open: only the periodic batch can count it
            now = relayed_bytes(platform)
            grown_in = now.get("in", 0) - before.get("in", 0)
            grown_out = now.get("out", 0) - before.get("out", 0)
            if (grown_in >= len(raw) and grown_out > len(answer)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert grown_in >= len(raw), (grown_in, len(raw))
        assert grown_out > len(answer), (grown_out, len(answer))


def test_one_gib_each_way_with_flat_memory(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    get(platform, grain.grain_id, "/whoami")  # start it
    watched = [platform.grainmgr_pid, *bridge_pids()]
    before = {}
    for pid in watched:  # a bridge of an earlier test's grain may be exiting right now
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            before[pid] = rss(pid)
    session = open_session(platform.stub, grain.grain_id)
    block = bytes(range(256)) * (MIB // 256)
    with relay_connect(session.stream, timeout=120) as sock:
        # upload: the app hashes what arrives
        sock.sendall(request_bytes("POST", "/upload", session, body_len=GIB))
        digest = hashlib.sha256()
        for _ in range(GIB // MIB):
            sock.sendall(block)
            digest.update(block)
        f = sock.makefile("rb")
        status, headers = read_head(f)
        import json

        answer = json.loads(f.read(int(headers["content-length"])))
        assert status == 200
        assert answer == {"bytes": GIB, "sha256": digest.hexdigest()}
        # download on the same stream
        sock.sendall(request_bytes("GET", f"/download?n={GIB}", session))
        status, headers = read_head(f)
        assert status == 200 and int(headers["content-length"]) == GIB
        got = 0
        while got < GIB:
            chunk = f.read1(MIB)
            assert chunk
            got += len(chunk)
        assert got == GIB
        f.close()
    grown = {pid: rss(pid) - before[pid] for pid in before if Path(f"/proc/{pid}").exists()}
    assert all(g < 64 * MIB for g in grown.values()), grown


def test_flooding_grain_hurts_neither_grainmgr_nor_other_grains(platform: Platform) -> None:
    flooder = create(platform, platform.probe)
    victim = create(platform, platform.probe)
    get(platform, victim.grain_id, "/whoami")
    session = open_session(platform.stub, flooder.grain_id)
    before = rss(platform.grainmgr_pid)
    with relay_connect(session.stream) as sock:
        sock.sendall(request_bytes("GET", "/flood", session))
        got = 0
        while got < 64 * MIB:
            chunk = sock.recv(MIB)
            assert chunk
            got += len(chunk)
        # Now stop reading while the flooder keeps writing: backpressure, not buffering.
        for _ in range(5):
            assert get(platform, victim.grain_id, "/whoami").status == 200
            time.sleep(0.2)
        assert rss(platform.grainmgr_pid) - before < 64 * MIB
    assert get(platform, victim.grain_id, "/whoami").status == 200
