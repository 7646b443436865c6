"""The relay's Unix socket (GRAINHOUSE_GRAINMGR_RELAY_SOCKET): which address a ticket carries,
how the setting is checked, and the socket itself (mode 0600, same handshake, stale file
replaced, removed at close)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from grainhouse_grainmgr.relay import Relay
from grainhouse_grainmgr.sessions import StreamKeys
from grainhouse_grainmgr.settings import GrainmgrSettings, advertised_relay

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("advertise", "bound", "path", "expected"),
    [
        ("", "127.0.0.1:40123", "/run/gh/relay.sock", "unix:/run/gh/relay.sock"),
        ("", "127.0.0.1:40123", "", "127.0.0.1:40123"),  # off: TCP as before
        ("grainmgr:7004", "0.0.0.0:7004", "/run/gh/relay.sock", "grainmgr:7004"),  # explicit wins
        ("grainmgr", "0.0.0.0:40999", "/run/gh/relay.sock", "grainmgr:40999"),
        ("unix:/elsewhere.sock", "127.0.0.1:1", "/run/gh/relay.sock", "unix:/elsewhere.sock"),
        ("unix:/elsewhere.sock", "127.0.0.1:1", "", "unix:/elsewhere.sock"),
    ],
)
def test_a_unix_socket_is_advertised_unless_relay_advertise_says_otherwise(
    advertise: str, bound: str, path: str, expected: str
) -> None:
    assert advertised_relay(advertise, bound, path) == expected


def test_relay_socket_and_unix_advertise_are_validated() -> None:
    def make(**kw: str) -> GrainmgrSettings:
        return GrainmgrSettings(database_url="postgresql://x@y/z", **kw)  # type: ignore[arg-type]

    assert make(relay_socket=" /run/gh/relay.sock ").relay_socket == "/run/gh/relay.sock"
    assert make(relay_socket="").relay_socket == ""
    assert make(relay_advertise="unix:/run/x.sock").relay_advertise == "unix:/run/x.sock"
    for bad in ({"relay_socket": "relative.sock"}, {"relay_socket": "/" + "x" * 120}):
        with pytest.raises(ValidationError):
            make(**bad)
    with pytest.raises(ValidationError):
        make(relay_advertise="unix:relative.sock")


async def test_the_relay_listens_on_its_unix_socket_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "relay.sock"
    path.touch()
    with pytest.raises(OSError, match="not a socket"):  # a file there is never removed
        await Relay(StreamKeys(), _no_grain).start("127.0.0.1:0", str(path))
    path.unlink()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a killed grainmgr leaves behind
    stale.close()
    relay = Relay(StreamKeys(), _no_grain)
    await relay.start("127.0.0.1:0", str(path))
    try:
        assert relay.socket_path == str(path)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        # Same handshake as TCP: an unknown key gets no answer, just a closed connection.
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"GRAINHOUSE-RELAY/1 " + b"A" * 43 + b"\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # A live key reaches the connector (which here has no grain: refused, closed).
        ticket = relay.keys.issue("g", "s")
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(f"GRAINHOUSE-RELAY/1 {ticket.secret}\r\n".encode())
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert _asked == [("g", "s")]
    finally:
        await relay.close()
    assert not path.exists()  # removed at close


_asked: list[tuple[str, str]] = []


async def _no_grain(grain_id: str, session_id: str) -> tuple[socket.socket, object, object]:
    from grainhouse_common.errors import GrainhouseError, Kind

    _asked.append((grain_id, session_id))
    raise GrainhouseError(Kind.NOT_FOUND, "no such grain here")
