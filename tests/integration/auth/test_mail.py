"""Mail delivery over a real SMTP conversation (a minimal SMTP peer on a free port)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from grainhouse_auth.mailer import MailConfig, Mailer
from grainhouse_common.errors import GrainhouseError, Kind

pytestmark = pytest.mark.integration


class SmtpPeer:
    """Just enough of RFC 5321 for smtplib: greets, accepts one message, records it."""

    def __init__(self, refuse_data: bool = False) -> None:
        self.refuse_data = refuse_data
        self.messages: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write((line + "\r\n").encode())
            await writer.drain()

        await say("220 test ESMTP")
        while line := (await reader.readline()).decode().strip():
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await say("250 test")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                await say("250 ok")
            elif verb == "DATA":
                if self.refuse_data:
                    await say("554 no thanks")
                    continue
                await say("354 go on")
                body = []
                while (chunk := (await reader.readline()).decode()) not in (".\r\n", ""):
                    body.append(chunk)
                self.messages.append("".join(body))
                await say("250 queued")
            elif verb == "QUIT":
                await say("221 bye")
                break
            else:
                await say("502 no")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def config(port: int) -> MailConfig:
    return MailConfig("127.0.0.1", port, "", "", "gh@example.org", False, dev_mode=False)


async def test_a_login_link_is_delivered_by_smtp() -> None:
    peer = SmtpPeer()
    port = await peer.start()
    try:
        await Mailer(config(port)).send(
            "ada@example.org",
            "Your login link",
            "Open http://h/?code=ghx_1",
            "http://h/?code=ghx_1",
        )
    finally:
        await peer.stop()
    assert len(peer.messages) == 1
    mail = peer.messages[0]
    assert "To: ada@example.org" in mail and "From: gh@example.org" in mail
    assert "http://h/?code=ghx_1" in mail


async def test_a_refusing_mail_server_is_unavailable() -> None:
    peer = SmtpPeer(refuse_data=True)
    port = await peer.start()
    try:
        with pytest.raises(GrainhouseError) as err:
            await Mailer(config(port)).send("ada@example.org", "s", "b", "l")
    finally:
        await peer.stop()
    assert err.value.kind is Kind.UNAVAILABLE and peer.messages == []
