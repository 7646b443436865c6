"""Schedule slots: in the future, in the right window, stable per schedule."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grainhouse_backup.schedules import PERIOD, next_slot

pytestmark = pytest.mark.unit

times = st.datetimes(
    min_value=dt.datetime(2024, 1, 2), max_value=dt.datetime(2035, 1, 1), timezones=st.just(dt.UTC)
)


@given(st.text(min_size=1, max_size=20), st.sampled_from(sorted(PERIOD)), times)
def test_next_slot_is_within_one_period(sid: str, every: str, now: dt.datetime) -> None:
    slot = next_slot(sid, every, now)
    assert now < slot <= now + dt.timedelta(seconds=PERIOD[every])
    assert next_slot(sid, every, slot) == slot + dt.timedelta(seconds=PERIOD[every])


@given(st.text(min_size=1, max_size=20), times)
def test_daily_runs_at_night_and_weekly_on_sunday(sid: str, now: dt.datetime) -> None:
    daily = next_slot(sid, "daily", now)
    assert 1 <= daily.hour < 5
    weekly = next_slot(sid, "weekly", now)
    assert weekly.isoweekday() == 7 and 1 <= weekly.hour < 5
    hourly = next_slot(sid, "hourly", now)
    assert hourly.second == 0


def test_schedules_are_spread() -> None:
    now = dt.datetime(2026, 5, 5, tzinfo=dt.UTC)
    minutes = {next_slot(f"s{i}", "hourly", now).minute for i in range(200)}
    assert len(minutes) > 30
