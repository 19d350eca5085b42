"""Percentiles, rates and ratios of the benchmarks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.bench.stats import percentile, rate, ratio, summarize

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 25) == pytest.approx(1.75)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 1) == 7.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_p99_of_hundred_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 95) == pytest.approx(95.05)


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_outside_range_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="within"):
        percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotonic_and_within_the_sample(
    values: list[float], a: float, b: float
) -> None:
    low, high = sorted((a, b))
    p_low, p_high = percentile(values, low), percentile(values, high)
    assert min(values) - 1e-6 <= p_low <= p_high + 1e-6
    assert p_high <= max(values) + 1e-6


def test_rate_counts_per_second() -> None:
    assert rate(50, 2.0) == 25.0
    assert rate(0, 2.0) == 0.0
    assert rate(10, 0.0) == 0.0


def test_rate_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        rate(-1, 1.0)


def test_ratio_is_ours_over_baseline() -> None:
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(300.0, 100.0) == 3.0


def test_ratio_to_a_zero_baseline_is_none() -> None:
    assert ratio(5.0, 0.0) is None


def test_summarize_reports_milliseconds() -> None:
    summary = summarize([0.001, 0.002, 0.003, 0.004])
    assert summary is not None
    assert summary.count == 4
    assert summary.mean_ms == pytest.approx(2.5)
    assert summary.p50_ms == pytest.approx(2.5)
    assert summary.max_ms == pytest.approx(4.0)
    assert summary.p99_ms == pytest.approx(3.97)


def test_summarize_nothing_is_none() -> None:
    assert summarize([]) is None
