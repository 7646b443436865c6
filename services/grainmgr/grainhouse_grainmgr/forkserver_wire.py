"""The fork server's end of its control socket: JSON datagrams, fds as SCM_RIGHTS.

Owns: the framing of the fork server's messages (one JSON object per SEQPACKET datagram, at
most MAX_MESSAGE bytes, with at most MAX_FDS fds riding along).
Trusts: its parent (grainmgr), the only other end of the socket, for well-formed JSON.
Never: interprets a message (the server's dispatch does); keeps an fd it received (the
caller closes or hands on every one); blocks on anything but the socket itself.
"""

from __future__ import annotations

import array
import json
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 16


class WireMixin:
    """The fork server's send and receive (part of `forkserver.ForkServer`)."""

    sock: socket.socket

    def send(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message).encode())

    def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % fds.itemsize
                fds.frombytes(payload[:usable])
        if not data:
            return None, list(fds)
        return json.loads(data), list(fds)
