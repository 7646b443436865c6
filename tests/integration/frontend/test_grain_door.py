"""The public listener's own HTTP/1.1 handling of grain requests (grain_door.py), end to end.

Plain grain requests are served by the frontend's door; anything unusual on the same
connection (a chunked or `Expect` request, a platform host, a head the door will not parse) is
handed to uvicorn with every byte of it. Both must look like one well-behaved HTTP/1.1 server
to a client: keep-alive, pipelining, the header rules into the grain, response framing.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Client, Stack

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("frontend-stack")]


class Conn:
    """One raw client connection and a tiny HTTP/1.1 response reader."""

    def __init__(self, stack: Stack) -> None:
        port = int(stack.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        more = self.sock.recv(65536)
        self.buf += more
        return bool(more)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._fill(), "connection closed inside a line"
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), "connection closed inside a body"
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response: (status, headers lowercased (last wins), body)."""
        status = int(self._line().split(b" ")[1])
        headers: dict[str, str] = {}
        while line := self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_request or status in (100, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._exact(size)
                assert self._exact(2) == b"\r\n"
            while self._line():
                pass
            return status, headers, body
        return status, headers, self._exact(int(headers["content-length"]))

    def closed(self, wait: float) -> bool:
        """Whether the server closed the connection (after anything still buffered) within
        `wait` seconds (the frontend's keep-alive timeout is longer than the waits here)."""
        self.sock.settimeout(wait)
        try:
            return not self.sock.recv(1) and not self.buf
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def still_serves(stack: Stack, host: tuple[str, str]) -> None:
    """A fresh connection gets a plain grain answer: the frontend went on serving."""
    with Conn(stack) as c:
        c.send(get(host, "/ok"))
        assert c.response()[::2] == (200, b"fine\n")


def get(host: tuple[str, str], path: str, extra: str = "", method: str = "GET") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host[0]}\r\n"
        f"Authorization: Bearer {host[1]}\r\n{extra}\r\n"
    ).encode()


@pytest.fixture()
def conn(stack: Stack) -> Iterator[Conn]:
    with Conn(stack) as c:
        yield c


def test_keep_alive_and_pipelined_requests(conn: Conn, api_host: tuple[str, str]) -> None:
    for _ in range(3):
        conn.send(get(api_host, "/ok"))
        assert conn.response()[::2] == (200, b"fine\n")
    # Three requests in one write: three answers, in order.
    conn.send(get(api_host, "/ok") + get(api_host, "/head?n=2") + get(api_host, "/ok"))
    assert conn.response()[::2] == (200, b"fine\n")
    status, _, head = conn.response()
    assert status == 200 and head.startswith(b"GET /head?n=2 HTTP/1.1\r\n")
    assert conn.response()[::2] == (200, b"fine\n")
    assert not conn.closed(1)


def test_what_reaches_the_grain(conn: Conn, api_host: tuple[str, str]) -> None:
    forged = (
        "X-Sandstorm-User-Id: forged\r\nX-Sandstorm-Permissions: admin\r\n"
        "Forwarded: for=1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: keep-alive\r\n"
        "X-Custom: kept  \r\n"
    )
    conn.send(get(api_host, "/head?q=a%20b", forged))
    status, headers, head = conn.response()
    assert status == 200
    assert "frame-ancestors" in headers["content-security-policy"]
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0] == "get /head?q=a%20b http/1.1"
    assert f"host: {api_host[0]}".lower() in lines
    assert "x-custom: kept" in lines
    assert "x-sandstorm-permissions: " in "\n".join(lines)
    for gone in ("forged", "authorization", "forwarded", "x-forwarded-for", "connection"):
        assert not any(line.startswith(gone) or "forged" in line for line in lines), gone
    assert "x-sandstorm-permissions: admin" not in lines
    assert "x-sandstorm-session-type: api" in lines


def test_bodies_both_ways_on_one_connection(conn: Conn, api_host: tuple[str, str]) -> None:
    data = bytes(range(256)) * 2048  # 512 KiB: several reads, flow control on both sides
    conn.send(get(api_host, "/echo", f"Content-Length: {len(data)}\r\n", "POST") + data)
    status, headers, body = conn.response()
    assert status == 200 and headers["x-request-framing"] == "length"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    # HEAD: the grain's Content-Length and no body (the next answer starts right after).
    conn.send(get(api_host, "/ok", method="HEAD"))
    status, headers, body = conn.response(head_request=True)
    assert (status, headers["content-length"], body) == (200, "5", b"")
    # A body ended by the grain closing its stream reaches the client framed (chunked), and
    # the client's connection goes on.
    conn.send(get(api_host, "/until-close"))
    status, headers, body = conn.response()
    assert (status, body) == (200, b"until the end\n")
    conn.send(get(api_host, "/ok"))
    assert conn.response()[::2] == (200, b"fine\n")


def test_connection_close_is_honoured(conn: Conn, api_host: tuple[str, str]) -> None:
    conn.send(get(api_host, "/ok", "Connection: close\r\n"))
    status, headers, body = conn.response()
    assert (status, body, headers["connection"]) == (200, b"fine\n", "close")
    assert conn.closed(30)


def test_unusual_requests_are_handed_to_uvicorn_on_the_same_connection(
    conn: Conn, api_host: tuple[str, str], stack: Stack
) -> None:
    conn.send(get(api_host, "/ok"))
    assert conn.response()[::2] == (200, b"fine\n")
    # A chunked request body: uvicorn's parser takes the connection from here on.
    chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    conn.send(get(api_host, "/echo", "Transfer-Encoding: chunked\r\n", "POST") + chunks)
    status, headers, body = conn.response()
    assert (status, body, headers["x-request-framing"]) == (200, b"hello world", "chunked")
    conn.send(get(api_host, "/ok"))
    assert conn.response()[::2] == (200, b"fine\n")


def test_expect_continue_and_a_platform_host_after_grain_requests(
    stack: Stack, api_host: tuple[str, str]
) -> None:
    with Conn(stack) as c:
        c.send(get(api_host, "/echo", "Content-Length: 4\r\nExpect: 100-continue\r\n", "POST"))
        assert c.response()[0] == 100
        c.send(b"ping")
        assert c.response()[::2] == (200, b"ping")
    with Conn(stack) as c:
        c.send(get(api_host, "/ok"))
        assert c.response()[::2] == (200, b"fine\n")
        platform = stack.url.split("/")[2]
        c.send(f"GET /healthz HTTP/1.1\r\nHost: {platform}\r\n\r\n".encode())
        status, headers, body = c.response()
        assert status in (200, 503) and headers["content-type"] == "application/json"
        assert b'"checks"' in body


@pytest.mark.parametrize(
    "bad",
    [
        "Bad Header: x\r\n",  # a space in a name
        "X-Nul: a\x00b\r\n",
        "X-Bare-Cr: a\rb\r\n",
    ],
)
def test_malformed_heads_are_refused_and_serving_goes_on(
    stack: Stack, api_host: tuple[str, str], bad: str
) -> None:
    with Conn(stack) as c:
        c.send(get(api_host, "/ok", bad))
        assert c.response()[0] == 400
    still_serves(stack, api_host)


def test_a_client_leaving_inside_its_body_hurts_nothing(
    stack: Stack, api_host: tuple[str, str]
) -> None:
    with Conn(stack) as c:
        c.send(get(api_host, "/echo", "Content-Length: 1000000\r\n", "POST") + b"x" * 1000)
    still_serves(stack, api_host)
    still_serves(stack, api_host)


GIB = 1 << 30
MIB = 1 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_one_gib_each_way_through_the_frontend_with_flat_memory(
    stack: Stack, admin_api: Client, probe_app: dict[str, Any]
) -> None:
    """The door's flow control both ways, on a stream grainmgr handed off: neither the
    frontend nor grainmgr grows with the body."""
    grain = admin_api.api("POST", "/grains", {"app_id": probe_app["app_id"], "title": "Big"})
    assert grain.status == 201, grain.text
    made = admin_api.api(
        "POST", f"/grains/{grain.json()['id']}/api-tokens", {"role": "editor", "label": "big"}
    )
    assert made.status == 201, made.text
    host = (made.json()["api_url"].split("/")[2], made.json()["token"])
    services = stack.services()
    watched = [int(services[name]["pid"]) for name in ("frontend", "grainmgr")]
    with Conn(stack) as c:
        c.sock.settimeout(300)
        c.send(get(host, "/whoami"))
        assert c.response()[0] == 200  # started, streams pooled
        before = {pid: rss(pid) for pid in watched}
        c.send(get(host, "/upload", f"Content-Length: {GIB}\r\n", "POST"))
        block = bytes(range(256)) * (MIB // 256)
        digest = hashlib.sha256()
        for _ in range(GIB // MIB):
            c.sock.sendall(block)
            digest.update(block)
        status, _, body = c.response()
        assert status == 200
        assert json.loads(body) == {"bytes": GIB, "sha256": digest.hexdigest()}
        c.send(get(host, f"/download?n={GIB}"))
        status = int(c._line().split(b" ")[1])
        headers = {}
        while line := c._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert status == 200 and int(headers["content-length"]) == GIB
        got = len(c.buf)
        c.buf = b""
        while got < GIB:
            chunk = c.sock.recv(MIB)
            assert chunk
            got += len(chunk)
        assert got == GIB
        grown = {pid: rss(pid) - before[pid] for pid in watched}
        assert all(g < 64 * MIB for g in grown.values()), grown
