"""Pieces of a cold open's path that need no sandbox: how the bridge sees the app listen (one
synchronous loopback connect per try) and the schema the fork server parses for every bridge."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from grainhouse_grainmgr import bridge, bridge_capnp, control

pytestmark = pytest.mark.unit


def app(**listen: Any) -> bridge.App:
    return bridge.App({"argv": ["/bin/true"], "env": {}, **listen})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_port_nobody_listens_on_is_not_listening() -> None:
    assert not app(port=free_port()).listens()


def test_a_listening_port_is_seen_at_once() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        assert app(port=listener.getsockname()[1]).listens()


def test_a_listener_with_a_full_backlog_is_listening_too() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        held = []
        try:
            # Fill the accept queue (nobody accepts): later connects get no answer at once.
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                held.append(s)
            assert app(port=port).listens()
        finally:
            for s in held:
                s.close()


def test_a_unix_socket_listens_once_it_exists_and_accepts(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    assert not app(port=None, unix_socket=path).listens()  # no such file yet
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(path)
        assert not app(port=None, unix_socket=path).listens()  # bound, not listening
        bound.listen(8)
        assert app(port=None, unix_socket=path).listens()


def test_the_fork_server_parses_the_schema_grainmgr_mounts_into_grains() -> None:
    saved = bridge_capnp.PRELOADED_SCHEMA
    try:
        bridge_capnp.preload_schema()
        schema = bridge_capnp.PRELOADED_SCHEMA
        assert schema is not None
        # The same file the grains get as the config's `schema` (grains.RUNTIME_INSIDE).
        assert Path(schema.__file__).resolve() == control.schema_path()
        assert hasattr(schema.Bridge, "Server") and hasattr(schema, "Health")
    finally:
        bridge_capnp.PRELOADED_SCHEMA = saved
