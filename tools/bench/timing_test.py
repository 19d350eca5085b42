"""The bounded timing loops and best-of-rounds selection."""

from __future__ import annotations

import pytest

from tools.bench.timing import Measurement, best_of, measure_async, measure_sync


def test_measure_sync_makes_exactly_calls_plus_warmup_calls() -> None:
    made: list[int] = []
    result = measure_sync("count", lambda: made.append(1), calls=40, max_seconds=600.0, warmup=5)
    assert len(made) == 45
    assert result.calls == 40
    assert result.failures == 0
    assert result.concurrency == 1
    assert result.latency is not None and result.latency.count == 40
    assert result.ops_per_second > 0


def test_measure_sync_stops_at_the_time_bound() -> None:
    made: list[int] = []
    result = measure_sync("bounded", lambda: made.append(1), calls=10**9, max_seconds=1e-9)
    # The first call already passes the deadline: the loop ends after it.
    assert result.calls == len(made) == 1


@pytest.mark.parametrize(
    ("calls", "max_seconds", "warmup"), [(0, 1.0, 0), (1, 0.0, 0), (1, 1.0, -1)]
)
def test_measure_sync_refuses_unbounded_or_empty_loops(
    calls: int, max_seconds: float, warmup: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        measure_sync("bad", lambda: None, calls=calls, max_seconds=max_seconds, warmup=warmup)


async def test_measure_async_shares_the_budget_and_counts_failures() -> None:
    made = 0

    async def call() -> bool:
        nonlocal made
        made += 1
        return made % 4 != 0

    result = await measure_async("async", call, calls=100, max_seconds=600.0, concurrency=7)
    assert made == 100
    assert result.calls == 100
    assert result.failures == 25
    assert result.concurrency == 7


async def test_measure_async_refuses_zero_concurrency() -> None:
    async def call() -> bool:
        return True

    with pytest.raises(ValueError, match="must be"):
        await measure_async("bad", call, calls=1, max_seconds=1.0, concurrency=0)


def measurement(ops: float) -> Measurement:
    return Measurement(
        name="m",
        calls=10,
        failures=0,
        concurrency=1,
        seconds=10 / ops,
        ops_per_second=ops,
        latency=None,
    )


def test_best_of_keeps_the_fastest_round_and_lists_all() -> None:
    best = best_of([measurement(100.0), measurement(300.0), measurement(200.0)])
    assert best.ops_per_second == 300.0
    assert best.rounds_ops_per_second == (100.0, 300.0, 200.0)


def test_best_of_refuses_nothing_and_mixed_names() -> None:
    with pytest.raises(ValueError, match="no rounds"):
        best_of([])
    other = measurement(1.0).model_copy(update={"name": "other"})
    with pytest.raises(ValueError, match="different"):
        best_of([measurement(1.0), other])
