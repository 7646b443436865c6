"""tests/support/ports.py: the ports tests give their processes are free, distinct and below
the kernel's ephemeral range (so an outgoing connection cannot take one first)."""

from __future__ import annotations

import socket

import pytest

from grainhouse_cli.supervisor import _ephemeral_low
from tests.support.ports import free_block, free_port

pytestmark = pytest.mark.unit


def test_free_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < _ephemeral_low() for p in ports), ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # nothing holds it


def test_a_free_block_is_free_below_the_range_and_shares_no_port() -> None:
    given = {free_port() for _ in range(20)}
    avoid = free_port()
    start = free_block(11, avoid=avoid)
    block = set(range(start, start + 11))
    assert avoid not in block and not block & given
    assert max(block) < _ephemeral_low()
    for port in block:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    again = free_block(11)
    assert not block & set(range(again, again + 11))
