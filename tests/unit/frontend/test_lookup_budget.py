"""The per-address budget of origin lookups at auth (lookup_budget.py), on a made-up clock."""

from __future__ import annotations

import pytest

from grainhouse_frontend.lookup_budget import LookupBudget

pytestmark = pytest.mark.unit


def test_a_burst_then_the_rate_then_a_wait() -> None:
    budget = LookupBudget(rate=2.0, burst=3.0)
    assert [budget.take("a", 100.0) for _ in range(3)] == [0, 0, 0]
    assert budget.take("a", 100.0) == 1  # empty: one token comes back in half a second
    assert budget.take("a", 100.5) == 0
    assert budget.take("a", 100.5) == 1
    # Waiting never earns more than the burst.
    assert [budget.take("a", 200.0) for _ in range(4)] == [0, 0, 0, 1]


def test_addresses_are_counted_apart() -> None:
    budget = LookupBudget(rate=1.0, burst=1.0)
    assert budget.take("a", 0.0) == 0
    assert budget.take("a", 0.0) == 1
    assert budget.take("b", 0.0) == 0


def test_a_slow_rate_asks_for_a_longer_wait() -> None:
    budget = LookupBudget(rate=0.25, burst=1.0)
    assert budget.take("a", 0.0) == 0
    assert budget.take("a", 0.0) == 4


def test_memory_stays_bounded_and_the_oldest_address_goes_first() -> None:
    budget = LookupBudget(rate=1.0, burst=1.0, max_addresses=2)
    budget.take("old", 0.0)
    budget.take("mid", 0.0)
    budget.take("new", 0.0)  # "old" is dropped: it starts again with a full burst
    assert budget.take("old", 0.0) == 0
    assert budget.take("new", 0.0) == 1
