"""Radicale (a real CalDAV server from PyPI, unmodified) in a real grain, driven by the real
`caldav` client library through grainmgr's relay.

The test plays the frontend's part of the data path with a small TCP forwarder: every client
connection gets its own one-time stream key (OpenStream) and is spliced onto a relay stream,
which is exactly what the frontend does for a grain API host.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from grainhouse_package import generate_key, pack_directory
from grainhouse_package.stack import PythonStack, build_python_stack
from grainhouse_proto import grainmgr_pb2 as pb

from .conftest import EXAMPLES, Platform, create, open_session, relay_connect

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("grains-stack")]


@pytest.fixture(scope="module")
def radicale(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> object:
    from .conftest import install

    out = tmp_path_factory.mktemp("radicale")
    build_python_stack(PythonStack(source_dir=EXAMPLES / "third-party"), out / "app")
    pack_directory(out / "app", out / "radicale.pkg", generate_key(), level=0)
    return install(platform.stub, out / "radicale.pkg")


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Forwarder:
    """127.0.0.1:<port> -> a fresh relay stream into the grain per connection."""

    def __init__(self, platform: Platform, grain_id: str, session: pb.OpenSessionResponse):
        self.platform = platform
        self.grain_id = grain_id
        self.session = session
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            ticket = self.platform.stub.OpenStream(
                pb.OpenStreamRequest(grain_id=self.grain_id, session_id=self.session.session_id),
                timeout=30,
            )
            upstream = relay_connect(ticket)
            upstream.settimeout(None)
            self.connections += 1
            self.sockets += [client, upstream]
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def forwarder(platform: Platform, radicale: object) -> Iterator[tuple[Forwarder, str]]:
    grain = create(platform, radicale)
    fwd = Forwarder(platform, grain.grain_id, open_session(platform.stub, grain.grain_id))
    yield fwd, grain.grain_id
    fwd.close()


def test_radicale_in_a_grain_with_the_caldav_client(
    platform: Platform, forwarder: tuple[Forwarder, str]
) -> None:
    import caldav  # the real client library of the real protocol

    fwd, grain_id = forwarder
    url = f"http://127.0.0.1:{fwd.port}/"
    with caldav.DAVClient(url=url, username="alice", password="x") as client:
        principal = client.principal()
        calendar = principal.make_calendar(name="Work")
        calendar.save_event(
            dtstart=datetime.datetime(2030, 1, 2, 10, 0),
            dtend=datetime.datetime(2030, 1, 2, 11, 0),
            summary="Standup",
        )
        found = calendar.search(
            start=datetime.datetime(2030, 1, 1),
            end=datetime.datetime(2030, 1, 3),
            event=True,
        )
        assert [str(e.component["summary"]) for e in found] == ["Standup"]
    assert fwd.connections >= 1  # every byte went through grainmgr's relay
    # The event lives in the grain's own storage (Radicale's folder is /var/collections).
    store = Path(platform.stack.data_dir) / "grainmgr" / "grains" / grain_id / "var"
    assert any(store.rglob("*.ics"))
