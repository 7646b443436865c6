"""When schedules run: slots per frequency, spread per schedule. Pure functions, no I/O.

Owns: the meaning of Frequency in backup.proto (hourly, daily, weekly) and the spreading of
runs so that many schedules do not all start at once.
Trusts: its inputs.
Never: reads the clock itself (callers pass `now`), so tests control time.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from grainhouse_proto import backup_pb2 as pb

EVERY = {pb.FREQUENCY_HOURLY: "hourly", pb.FREQUENCY_DAILY: "daily", pb.FREQUENCY_WEEKLY: "weekly"}
FREQUENCY = {v: k for k, v in EVERY.items()}
PERIOD = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
# Daily and weekly runs are spread over the night, 01:00 to 05:00 UTC.
NIGHT_START, NIGHT_SECONDS = 3600, 4 * 3600
# Weekly runs on Sunday night (ISO weekday 7 -> 6 days after Monday 00:00).
WEEK_DAY_OFFSET = 6 * 86400
_MONDAY = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # a Monday, the origin of weekly periods


def spread(schedule_id: str, span: int) -> int:
    """A stable offset in [0, span) seconds for one schedule."""
    digest = hashlib.sha256(schedule_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


def offset(schedule_id: str, every: str) -> int:
    if every == "hourly":
        return spread(schedule_id, 60) * 60
    if every == "daily":
        return NIGHT_START + spread(schedule_id, NIGHT_SECONDS)
    return WEEK_DAY_OFFSET + NIGHT_START + spread(schedule_id, NIGHT_SECONDS)


def next_slot(schedule_id: str, every: str, now: dt.datetime, period: int = 0) -> dt.datetime:
    """The first slot strictly after `now`. `period` > 0 overrides the interval (tests only)."""
    span = period or PERIOD[every]
    shift = offset(schedule_id, every) % span if not period else spread(schedule_id, span)
    elapsed = (now - _MONDAY).total_seconds()
    base = int(elapsed // span) * span + shift
    if base <= elapsed:
        base += span
    return _MONDAY + dt.timedelta(seconds=base)
