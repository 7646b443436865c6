"""Retention rules: examples and properties."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grainhouse_backup.retention import Item, Rule, kept, to_delete

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC)  # a Monday


def hourly(n: int) -> list[Item]:
    return [Item(f"b{i:04d}", T0 + dt.timedelta(hours=i)) for i in range(n)]


def test_keep_last() -> None:
    items = hourly(10)
    assert kept(items, Rule(keep_last=3)) == {"b0009", "b0008", "b0007"}
    assert to_delete(items, Rule(keep_last=3))[0] == "b0000"


def test_keep_daily_takes_newest_of_each_day() -> None:
    items = hourly(72)  # Mar 2 12:00 .. Mar 5 11:00
    assert kept(items, Rule(keep_daily=2)) == {"b0071", "b0059"}  # Mar 5 11:00, Mar 4 23:00


def test_keep_weekly_uses_iso_weeks() -> None:
    items = [Item(f"d{i}", T0 + dt.timedelta(days=i)) for i in range(21)]
    # Weeks: Mar 2-8 (d0-d6), Mar 9-15 (d7-d13), Mar 16-22 (d14-d20).
    assert kept(items, Rule(keep_weekly=2)) == {"d20", "d13"}


def test_rules_combine() -> None:
    items = hourly(72)
    assert kept(items, Rule(keep_last=1, keep_daily=2)) == {"b0071", "b0059"}
    assert len(kept(items, Rule(keep_last=5, keep_daily=4))) == 5 + 3


times = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1), timezones=st.just(dt.UTC)
)
rules = st.builds(Rule, st.integers(0, 10), st.integers(0, 10), st.integers(0, 10)).filter(
    lambda r: not r.off
)


@settings(max_examples=200, deadline=None)
@given(st.lists(times, max_size=60), rules)
def test_properties(stamps: list[dt.datetime], rule: Rule) -> None:
    items = [Item(f"b{i}", t) for i, t in enumerate(stamps)]
    keep = kept(items, rule)
    gone = to_delete(items, rule)
    ids = {i.backup_id for i in items}
    assert keep | set(gone) == ids and not keep & set(gone)
    if items:
        newest = max(items, key=lambda i: (i.created_at, i.backup_id))
        assert newest.backup_id in keep  # the newest backup always survives
    assert len(keep) <= rule.keep_last + rule.keep_daily + rule.keep_weekly
    if items:
        assert len(keep) >= min(len(items), rule.keep_last)
    # Idempotent: applying the rule to what it kept deletes nothing more.
    rest = [i for i in items if i.backup_id in keep]
    assert to_delete(rest, rule) == []
