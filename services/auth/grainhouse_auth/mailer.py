"""Outgoing mail: login links and invitations, by SMTP, or to the log in dev mode.

Owns: the SMTP connection (one per message; mail is rare).
Trusts: the SMTP server named in settings.
Never: logs a link outside dev mode; never blocks the event loop (smtplib runs in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

from grainhouse_common.errors import GrainhouseError, Kind

log = logging.getLogger("grainhouse.auth.mail")


@dataclass(frozen=True)
class MailConfig:
    host: str
    port: int
    username: str
    password: str
    sender: str
    starttls: bool
    dev_mode: bool
    timeout: float = 10.0

    @property
    def configured(self) -> bool:
        return bool(self.host) or self.dev_mode


class Mailer:
    def __init__(self, config: MailConfig) -> None:
        self.config = config

    async def send(self, to: str, subject: str, body: str, link: str) -> None:
        """Send, or in dev mode without SMTP write the link to the log. UNAVAILABLE on failure."""
        cfg = self.config
        if not cfg.host:
            if not cfg.dev_mode:
                raise GrainhouseError(Kind.CONFLICT, "email is not configured on this server")
            # Dev mode only: the person trying Grainhouse locally reads the link here.
            log.warning(
                "dev mode: mail not sent", extra={"to": to, "subject": subject, "link": link}
            )
            return
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = cfg.sender, to, subject
        msg.set_content(body)
        try:
            await asyncio.to_thread(self._deliver, msg)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("mail delivery failed: %s", type(exc).__name__)
            raise GrainhouseError(Kind.UNAVAILABLE, "the mail server refused; try again") from exc

    def _deliver(self, msg: EmailMessage) -> None:
        cfg = self.config
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as smtp:
            if cfg.starttls:
                smtp.starttls()
            if cfg.username:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(msg)
