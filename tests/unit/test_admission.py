"""The coordinator's adaptive cap on searches in flight, on a fake clock."""

import pytest

from shardsearch.coordinator.admission import INITIAL_LIMIT, MIN_LIMIT, AdaptiveLimit
from shardsearch.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_searches_past_the_cap_are_refused_at_once() -> None:
    limit = AdaptiveLimit(0.25, maximum=3)
    held = [limit.acquire() for _ in range(3)]
    with pytest.raises(ResourceExhausted, match="adaptive limit"):
        limit.acquire()
    limit.release(held.pop())
    limit.acquire()  # a slot freed: admitted again


def test_slow_searches_cut_the_cap_and_fast_ones_grow_it_back() -> None:
    clock = Clock()
    limit = AdaptiveLimit(0.25, maximum=10_000, clock=clock)
    started = [limit.acquire() for _ in range(200)]
    clock.now += 1.0  # all of them took 1 s: over the target
    for s in started[:100]:
        limit.release(s)
    assert limit.limit == pytest.approx(INITIAL_LIMIT * 0.9)  # one cut per target interval, not one per search
    clock.now += 0.3
    for s in started[100:]:
        limit.release(s)
    assert limit.limit == pytest.approx(INITIAL_LIMIT * 0.81)
    for _ in range(50):  # overload persists: the cap falls, but never below the floor
        clock.now += 1.0
        limit.release(limit.acquire() - 1.0)
    assert limit.limit == MIN_LIMIT
    cap = limit.limit
    for _ in range(100):  # busy but fast again: the cap climbs while it is in use
        held = [limit.acquire() for _ in range(int(limit.limit))]
        clock.now += 0.01
        for s in held:
            limit.release(s)
    assert limit.limit > 4 * cap


def test_a_disabled_limit_admits_everything() -> None:
    limit = AdaptiveLimit(0, maximum=1)
    for _ in range(1000):
        limit.acquire()
