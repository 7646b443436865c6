"""WriterThread: calls run in order on one thread; the first error surfaces; abandon stops."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from grainhouse_backup.writer_thread import DEPTH, WriterThread

pytestmark = pytest.mark.unit


def test_calls_run_in_order_off_the_loop_thread() -> None:
    seen: list[tuple[int, str]] = []

    async def go() -> None:
        pipe = WriterThread()
        for i in range(DEPTH * 5):  # more than the queue holds: put waits, nothing is lost
            await pipe.put(lambda i=i: seen.append((i, threading.current_thread().name)))
        await pipe.close()

    asyncio.run(go())
    assert [i for i, _ in seen] == list(range(DEPTH * 5))
    assert {name for _, name in seen} == {"archive-writer"}


def test_the_first_error_surfaces_and_later_calls_do_not_run() -> None:
    ran: list[int] = []

    def boom() -> None:
        raise ValueError("more data than the entry declared")

    async def go() -> None:
        pipe = WriterThread()
        await pipe.put(ran.append, 1)
        await pipe.put(boom)
        await pipe.put(ran.append, 2)  # may be queued before the error is seen: never runs
        await pipe.close()

    with pytest.raises(ValueError, match="more data"):
        asyncio.run(go())
    assert ran == [1]


def test_abandon_waits_for_the_running_call_and_drops_the_rest() -> None:
    ran: list[int] = []

    def slow(i: int) -> None:
        time.sleep(0.05)
        ran.append(i)

    async def go() -> None:
        pipe = WriterThread()
        for i in range(DEPTH):
            await pipe.put(slow, i)
        pipe.abandon()
        after = list(ran)
        await asyncio.sleep(0.2)
        assert ran == after  # nothing ran once abandon returned

    asyncio.run(go())
    assert len(ran) < DEPTH
