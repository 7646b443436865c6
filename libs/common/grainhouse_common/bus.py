"""NATS helpers: a connection that survives server restarts, and events with request ids.

Owns: the service's NATS connection.
Trusts: the NATS server to deliver; nothing about a message's content (handlers parse it).
Never: puts secrets in subjects, headers or event bodies.

Subjects follow `grainhouse.<svc>.<noun>.<event>` (ARCHITECTURE.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from grainhouse_common import requestid
from grainhouse_common.metrics import DependencyMetrics

log = logging.getLogger("grainhouse.bus")


class Bus:
    """One NATS connection per process; reconnects forever once it has connected."""

    def __init__(self, url: str, name: str, metrics: DependencyMetrics) -> None:
        self.url = url
        self.name = name
        self.metrics = metrics
        self.nc: Client | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self, stop: asyncio.Event) -> bool:
        """Connect with backoff until it works or `stop` is set. True when connected."""
        delay = 0.2
        while not stop.is_set():
            try:
                self.nc = await nats.connect(
                    servers=[u.strip() for u in self.url.split(",")],
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,  # a NATS restart must never end the service
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                )
                self.metrics.up.labels(dependency="nats").set(1)
                log.info("connected to NATS")
                return True
            except (TimeoutError, OSError, NatsError) as exc:
                self.metrics.up.labels(dependency="nats").set(0)
                log.warning("NATS not reachable, retrying in %.1fs: %s", delay, type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", type(exc).__name__)

    async def _on_disconnect(self) -> None:
        self.metrics.up.labels(dependency="nats").set(0)
        log.warning("NATS disconnected")

    async def _on_reconnect(self) -> None:
        self.metrics.up.labels(dependency="nats").set(1)
        log.info("NATS reconnected")

    async def publish(self, subject: str, event: dict[str, Any]) -> bool:
        """Publish a JSON event with the request id header. False (and counted) on failure."""
        if self.nc is None:
            self.metrics.nats_errors.labels(operation="publish").inc()
            return False
        headers = {requestid.HEADER: requestid.ensure()}
        try:
            await self.nc.publish(subject, json.dumps(event).encode(), headers=headers)
            return True
        except (NatsError, OSError) as exc:
            self.metrics.nats_errors.labels(operation="publish").inc()
            log.warning("NATS publish to %s failed: %s", subject, type(exc).__name__)
            return False

    async def subscribe(
        self, subject: str, handler: Callable[[str, dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Call `handler(subject, event)` for each JSON event, under the sender's request id."""
        assert self.nc is not None

        async def on_msg(msg: Msg) -> None:
            rid = requestid.accept((msg.headers or {}).get(requestid.HEADER))
            token = requestid.set_current(rid)
            try:
                await handler(msg.subject, json.loads(msg.data or b"{}"))
            except Exception:
                self.metrics.nats_errors.labels(operation="consume").inc()
                log.exception("handler for %s failed", msg.subject)
            finally:
                requestid.reset(token)

        await self.nc.subscribe(subject, cb=on_msg)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except (TimeoutError, NatsError, OSError):
                await self.nc.close()
