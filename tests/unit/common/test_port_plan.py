"""`grainhouse up --http-port 0`: every planned port is distinct, free and below the kernel's
ephemeral range (an outgoing connection cannot be handed one before the service binds it)."""

from __future__ import annotations

import socket

import pytest

from grainhouse_cli.supervisor import Ports, _ephemeral_low

pytestmark = pytest.mark.unit


def test_any_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    for _ in range(20):
        plan = Ports.plan(0)
        ports = [plan.http, plan.auth, plan.grainmgr, plan.backup, plan.postgres, plan.nats]
        ports += [plan.nats_monitor, *plan.metrics.values()]
        assert len(set(ports)) == len(ports) == 11
        assert all(10000 <= p < _ephemeral_low() for p in ports), ports
        with socket.socket() as s:
            s.bind(("127.0.0.1", plan.auth))  # free at planning time


def test_a_fixed_http_port_plans_the_next_ten() -> None:
    plan = Ports.plan(6080)
    assert (plan.http, plan.auth, plan.metrics["frontend"]) == (6080, 6081, 6090)
