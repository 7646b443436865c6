"""The ports of a `grainhouse up` run: planned once, checked free before anything starts.

Owns: the port plan (the frontend's HTTP port, then the internal services' ports: fixed after
`--http-port P` as P+1 … P+10, or any free ones below the kernel's ephemeral range).
Trusts: the kernel's `ip_local_port_range` for where outgoing connections take their ports.
Never: holds a port open (a port is free when planned; the service binds it itself).
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

from grainhouse_cli.datadir import DataDirError

# The services `grainhouse up` runs, in start order: each gets a metrics port of its own.
SERVICES = ("auth", "grainmgr", "backup", "frontend")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: set[int] | None = None) -> int:
    """A port free now, below the kernel's ephemeral range: a port from that range may be given
    to some outgoing connection (a database client, another stack's) in the seconds between
    planning and the service's bind, and the service then fails to start."""
    taken = taken if taken is not None else set()
    low = min(_ephemeral_low(), 65536)
    for _ in range(200):
        port = random.randint(10000, low - 1) if low > 10001 else 0  # noqa: S311 - not a secret
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            got = int(s.getsockname()[1])
            if got not in taken:
                taken.add(got)
                return got
    raise DataDirError("no free port on 127.0.0.1 for Grainhouse's services")


def check_port_free(port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DataDirError(
                f"port {port} ({what}) on 127.0.0.1 is already in use: "
                "free it or pick another with --http-port"
            ) from None


@dataclass
class Ports:
    http: int
    auth: int
    grainmgr: int
    backup: int
    postgres: int
    nats: int
    nats_monitor: int
    metrics: dict[str, int]

    @classmethod
    def plan(cls, http_port: int) -> Ports:
        if http_port == 0:
            taken: set[int] = set()
            http = free_port(taken)
            nums = iter([free_port(taken) for _ in range(10)])
        else:
            http = http_port
            nums = iter(range(http_port + 1, http_port + 11))
        auth, grainmgr, backup, pg, nats, natsmon = (next(nums) for _ in range(6))
        metrics = {svc: next(nums) for svc in SERVICES}
        return cls(http, auth, grainmgr, backup, pg, nats, natsmon, metrics)

    def all(self) -> dict[str, int]:
        named = {
            "frontend http": self.http,
            "auth gRPC": self.auth,
            "grainmgr gRPC": self.grainmgr,
            "backup gRPC": self.backup,
            "PostgreSQL": self.postgres,
            "NATS": self.nats,
            "NATS monitor": self.nats_monitor,
        }
        named.update({f"{svc} metrics": port for svc, port in self.metrics.items()})
        return named
