"""The arithmetic of the benchmarks: percentiles, rates and ratios.

Pure functions over plain numbers so they can be unit-tested exactly. Percentiles use
linear interpolation between the closest ranks (the default of NumPy and of
:func:`statistics.quantiles` with ``method="inclusive"``), so p50 of ``[1, 2, 3, 4]`` is
2.5 and p100 is the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

__all__ = ["LatencySummary", "percentile", "rate", "ratio", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation.

    Raises ``ValueError`` for an empty sequence or ``q`` outside [0, 100]: a benchmark
    with no samples has no percentile, and reporting 0 would hide that.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be within [0, 100], not {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    lower = math.floor(position)
    upper = math.ceil(position)
    if lower == upper:
        return float(ordered[lower])
    weight = position - lower
    return float(ordered[lower] * (1.0 - weight) + ordered[upper] * weight)


def rate(count: int, seconds: float) -> float:
    """``count`` per second over ``seconds``; 0 when nothing happened or no time passed."""
    if count < 0:
        raise ValueError("a count cannot be negative")
    if seconds <= 0.0 or count == 0:
        return 0.0
    return count / seconds


def ratio(ours: float, baseline: float) -> float | None:
    """``ours / baseline``; ``None`` when the baseline is zero (no meaningful ratio)."""
    if baseline == 0.0:
        return None
    return ours / baseline


class LatencySummary(BaseModel):
    """Percentiles of a latency sample, in milliseconds."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def summarize(seconds: Sequence[float]) -> LatencySummary | None:
    """Summary of latencies given in seconds (reported in ms); ``None`` when empty."""
    if not seconds:
        return None
    ms = [value * 1000.0 for value in seconds]
    return LatencySummary(
        count=len(ms),
        mean_ms=sum(ms) / len(ms),
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
    )
