"""One real platform (`grainhouse up`) for the grains tests, plus clients for gRPC and the relay."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_proto import common_pb2, grainmgr_pb2_grpc
from grainhouse_proto import grainmgr_pb2 as pb
from tests.support import stack as support

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples"
IDLE_SECONDS = 5
CHUNK = 1024 * 1024


def make_data_root() -> Path:
    return support.make_data_root("gh-grains-")


class Stack(support.Stack):
    defaults: ClassVar[dict[str, str]] = {
        # The auth service's grain registration is tested with auth; owners here are
        # made-up ids.
        "GRAINHOUSE_GRAINMGR_REGISTER_WITH_AUTH": "false",
        "GRAINHOUSE_GRAINMGR_IDLE_STOP_SECONDS": str(IDLE_SECONDS),
        "GRAINHOUSE_GRAINMGR_HOUSEKEEPING_INTERVAL_SECONDS": "0.5",
        "GRAINHOUSE_GRAINMGR_STOP_GRACE_SECONDS": "3",
        "GRAINHOUSE_GRAINMGR_GRAIN_VAR_QUOTA_BYTES": str(2 * 1024**3),
    }


@dataclass
class Platform:
    stack: Stack
    stub: grainmgr_pb2_grpc.GrainManagerStub
    grainmgr_pid: int
    metrics_url: str
    probe: pb.InstallPackageResponse
    static: pb.InstallPackageResponse
    packages: Path


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = make_data_root()
    stack = Stack(root)
    channel = None
    try:
        stack.start()
        services = stack.status()["services"]
        grainmgr = services["grainmgr"]
        channel = grpc.insecure_channel(grainmgr["grpc"])
        stub = grainmgr_pb2_grpc.GrainManagerStub(channel)
        wait_serving(stub)
        out = tmp_path_factory.mktemp("packages")
        key = generate_key()
        pack_directory(HERE / "testapp", out / "probe.pkg", key, level=0)
        pack_directory(EXAMPLES / "static-site", out / "static.pkg", generate_key(), level=0)
        probe = install(stub, out / "probe.pkg")
        static = install(stub, out / "static.pkg")
        yield Platform(
            stack, stub, grainmgr["pid"], grainmgr.get("metrics", ""), probe, static, out
        )
    finally:
        if channel is not None:
            channel.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_serving(stub: grainmgr_pb2_grpc.GrainManagerStub, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            stub.ListPackages(pb.ListPackagesRequest(), timeout=5)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def upload_requests(data: bytes, **meta: Any) -> Iterator[pb.InstallPackageRequest]:
    yield pb.InstallPackageRequest(
        metadata=pb.InstallPackageMetadata(
            size_bytes=meta.pop("size_bytes", len(data)),
            sha256=meta.pop("sha256", hashlib.sha256(data).hexdigest()),
            **meta,
        )
    )
    for i in range(0, len(data), CHUNK):
        yield pb.InstallPackageRequest(chunk=data[i : i + CHUNK])


def install(stub: grainmgr_pb2_grpc.GrainManagerStub, path: Path, **meta: Any) -> Any:
    return stub.InstallPackage(upload_requests(path.read_bytes(), **meta), timeout=120)


def identity(user: str = "a" * 32, name: str = "Alice%20A") -> common_pb2.AppIdentity:
    return common_pb2.AppIdentity(user_id=user, display_name=name, preferred_handle="alice")


def open_session(
    stub: grainmgr_pb2_grpc.GrainManagerStub, grain_id: str, **kw: Any
) -> pb.OpenSessionResponse:
    return stub.OpenSession(
        pb.OpenSessionRequest(
            grain_id=grain_id,
            identity=kw.pop("identity", identity()),
            permissions=kw.pop("permissions", ["view", "edit"]),
            session_type=kw.pop("session_type", pb.SESSION_TYPE_NORMAL),
            tab_id=kw.pop("tab_id", "tab-1"),
            base_path=kw.pop("base_path", "http://ui-test.localhost"),
            **kw,
        ),
        timeout=60,
    )


def relay_dial(address: str, timeout: float = 30) -> socket.socket:
    """A connection to the relay at a ticket's address: `unix:<path>` or `host:port`."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address[5:])
        except BaseException:
            sock.close()
            raise
        return sock
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def relay_connect(ticket: pb.StreamTicket, timeout: float = 30) -> socket.socket:
    sock = relay_dial(ticket.relay_address, timeout)
    try:
        sock.sendall(f"GRAINHOUSE-RELAY/1 {ticket.stream_key_secret}\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n"):
            got = sock.recv(1)
            if not got:
                raise ConnectionError(f"relay closed after {answer!r}")
            answer += got
        assert answer == b"OK\r\n"
    except BaseException:
        sock.close()
        raise
    return sock


def request_bytes(
    method: str,
    path: str,
    session: pb.OpenSessionResponse,
    body_len: int = 0,
    extra: str = "",
    permissions: str = "view,edit",
) -> bytes:
    """What the frontend writes: identity headers from the session, the session's Host."""
    ident = "".join(
        f"{k}: {v}\r\n"
        for k, v in {
            "X-Sandstorm-User-Id": "a" * 32,
            "X-Sandstorm-Username": "Alice%20A",
            "X-Sandstorm-Permissions": permissions,
            "X-Sandstorm-Session-Id": session.session_id,
            "X-Sandstorm-Session-Type": "normal",
            "X-Sandstorm-Base-Path": "http://ui-test.localhost",
        }.items()
    )
    length = f"Content-Length: {body_len}\r\n" if method in ("POST", "PUT") else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: ui-test.localhost\r\n{ident}{length}{extra}\r\n"
    ).encode()


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def read_head(f: Any) -> tuple[int, dict[str, str]]:
    status_line = f.readline()
    if not status_line:
        raise ConnectionError("no response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = f.readline().decode("latin-1").strip()
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers


def http(sock: socket.socket, raw: bytes) -> Response:
    """One request on an open relay stream (keep-alive: the stream stays usable)."""
    sock.sendall(raw)
    with sock.makefile("rb") as f:
        status, headers = read_head(f)
        body = f.read(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


def get(platform: Platform, grain_id: str, path: str) -> Response:
    session = open_session(platform.stub, grain_id)
    with relay_connect(session.stream) as sock:
        return http(sock, request_bytes("GET", path, session))


def create(platform: Platform, package: Any, owner: str = "owner-1", **kw: Any) -> pb.Grain:
    return platform.stub.CreateGrain(
        pb.CreateGrainRequest(app_id=package.app_id, owner_account_id=owner, **kw), timeout=30
    )


def wait_state(platform: Platform, grain_id: str, state: int, timeout: float = 60) -> pb.Grain:
    deadline = time.monotonic() + timeout
    while True:
        grain = platform.stub.GetGrain(pb.GetGrainRequest(grain_id=grain_id), timeout=10)
        if grain.state == state:
            return grain
        if time.monotonic() > deadline:
            raise AssertionError(f"grain stayed {pb.GrainState.Name(grain.state)}")
        time.sleep(0.1)


def refusing_backend() -> Any:
    """A PlatformBackend that refuses every call: grainmgr's side of fd 3 for a bridge
    connection made without a running grain behind it (the hostile-bridge tests)."""
    from grainhouse_grainmgr.control import schema

    class Refusing(schema().PlatformBackend.Server):  # type: ignore[misc]
        async def stayAwake(self, **_: Any) -> None:
            raise ValueError("no platform here")

        async def getStorageUsage(self, **_: Any) -> None:
            raise ValueError("no platform here")

    return Refusing()
