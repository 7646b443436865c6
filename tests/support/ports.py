"""Free TCP ports on 127.0.0.1 for the processes tests and benchmarks start.

Ports come from below the kernel's ephemeral range (the supervisor's own planner, so tests and
`grainhouse up` pick alike): a port taken from that range by binding port 0 may be handed to
an outgoing connection (a database client, another stack's) before our service binds it, and
the service then fails to start.

Owns: the set of ports this process has already handed out (never handed out twice).
Trusts: `grainhouse_cli.supervisor.free_port` and `_ephemeral_low` (the CLI's port plan).
Never: holds a socket open; a test that needs a bound listener (an fd passed on, a port kept
busy on purpose) binds its own.
"""

from __future__ import annotations

import random
import socket

from grainhouse_cli.supervisor import _ephemeral_low
from grainhouse_cli.supervisor import free_port as _planned_port

_TAKEN: set[int] = set()


def free_port() -> int:
    """A port free now, below the ephemeral range, not handed out before in this process."""
    return _planned_port(_TAKEN)


def free_block(size: int, avoid: int | None = None) -> int:
    """The first of `size` consecutive ports free now, all below the ephemeral range and away
    from `avoid` (`grainhouse up --http-port P` gives the internal services P+1 … P+10)."""
    top = _ephemeral_low() - size
    top = top if top > 10000 else 65536 - size  # no room below: any block will do
    for _ in range(200):
        start = random.randint(10000, top)
        block = range(start, start + size)
        if (avoid is not None and avoid in block) or _TAKEN.intersection(block):
            continue
        try:
            for port in block:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _TAKEN.update(block)
        return start
    raise AssertionError(f"no free block of {size} ports on 127.0.0.1")
