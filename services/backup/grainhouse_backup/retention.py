"""Retention: which of a schedule's backups to keep. Pure functions, no I/O.

Owns: the meaning of `Retention` in backup.proto (keep_last, keep_daily, keep_weekly).
Trusts: its inputs (one schedule's backups, with UTC creation times).
Never: sees manual backups or another schedule's backups (the caller passes only the
schedule's own); deletes anything itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    @property
    def off(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly)


@dataclass(frozen=True)
class Item:
    backup_id: str
    created_at: dt.datetime  # timezone-aware


def _newest_per_bucket(
    items: Sequence[Item], count: int, bucket: Callable[[dt.datetime], Hashable]
) -> set[str]:
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for item in items:  # newest first
        if len(seen) >= count:
            break
        key = bucket(item.created_at.astimezone(dt.UTC))
        if key not in seen:
            seen.add(key)
            kept.add(item.backup_id)
    return kept


def kept(items: Sequence[Item], rule: Rule) -> set[str]:
    """Ids kept by any rule. All-zero rules keep everything (callers refuse them earlier)."""
    if rule.off:
        return {i.backup_id for i in items}
    ordered = sorted(items, key=lambda i: (i.created_at, i.backup_id), reverse=True)
    keep = {i.backup_id for i in ordered[: rule.keep_last]}
    keep |= _newest_per_bucket(ordered, rule.keep_daily, lambda t: t.date())
    keep |= _newest_per_bucket(ordered, rule.keep_weekly, lambda t: t.isocalendar()[:2])
    return keep


def to_delete(items: Sequence[Item], rule: Rule) -> list[str]:
    """Ids to delete, oldest first."""
    keep = kept(items, rule)
    ordered = sorted(items, key=lambda i: (i.created_at, i.backup_id))
    return [i.backup_id for i in ordered if i.backup_id not in keep]
