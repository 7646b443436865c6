"""Under `grainhouse up` the relay also listens on a Unix socket in the data directory and
tickets advertise it (`unix:<path>`): local frontends skip loopback TCP."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import pytest

from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import (
    Platform,
    create,
    http,
    open_session,
    relay_connect,
    relay_dial,
    request_bytes,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


def test_tickets_advertise_the_unix_socket_and_traffic_flows(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    address = session.stream.relay_address
    assert address.startswith("unix:"), address
    path = Path(address[len("unix:") :])
    assert path == platform.stack.data_dir.resolve() / "run" / "relay" / "relay.sock"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700  # only this user may enter
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert os.lstat(path).st_uid == os.getuid()  # the user running the services (and us)
    with relay_connect(session.stream) as sock:
        for _ in range(3):  # keep-alive: several requests on one relayed stream
            assert http(sock, request_bytes("GET", "/whoami", session)).status == 200
    ticket = platform.stub.OpenStream(
        pb.OpenStreamRequest(grain_id=grain.grain_id, session_id=session.session_id)
    )
    assert ticket.relay_address == address
    with relay_connect(ticket) as sock:
        assert http(sock, request_bytes("GET", "/whoami", session)).status == 200


def hand_off(ticket: pb.StreamTicket) -> tuple[socket.socket, socket.socket]:
    """(lease, the app's socket) of a stream handed off on the relay's Unix socket."""
    lease = relay_dial(ticket.relay_address)
    lease.sendall(f"GRAINHOUSE-HANDOFF/1 {ticket.stream_key_secret}\r\n".encode())
    data, fds, _, _ = socket.recv_fds(lease, 16, 4)
    assert (data, len(fds)) == (b"OK\r\n", 1)
    app = socket.socket(fileno=fds[0])
    app.settimeout(30)
    return lease, app


def test_a_handed_off_stream_reaches_the_app_and_a_stop_cuts_it(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    lease, app = hand_off(session.stream)
    with lease, app:
        assert app.family == socket.AF_INET  # the app's own TCP socket, inside the grain
        for _ in range(2):
            reply = http(app, request_bytes("GET", "/whoami", session))
            assert reply.status == 200 and session.session_id.encode() in reply.body
        platform.stub.StopGrain(pb.StopGrainRequest(grain_id=grain.grain_id), timeout=60)
        # The app is gone and grainmgr shut the socket: the holder sees the end.
        with contextlib.suppress(ConnectionResetError):
            assert app.recv(100) == b""


def test_closing_the_lease_ends_the_handed_off_stream(platform: Platform) -> None:
    grain = create(platform, platform.probe)
    session = open_session(platform.stub, grain.grain_id)
    lease, app = hand_off(session.stream)
    with app:
        assert http(app, request_bytes("GET", "/whoami", session)).status == 200
        lease.close()
        assert app.recv(100) == b""  # grainmgr shut it down when the lease ended
