"""Timing loops shared by the benchmarks: bounded in calls *and* in time.

Every loop stops at ``calls`` calls or after ``max_seconds``, whichever comes first, after
``warmup`` untimed calls; each call's duration is kept for percentiles. The asynchronous
loop runs ``concurrency`` workers that share the call budget, so throughput under
concurrency and per-call latency come from the same calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from pydantic import BaseModel, ConfigDict

from tools.bench.stats import LatencySummary, rate, summarize

__all__ = ["Measurement", "best_of", "measure_async", "measure_sync"]


class Measurement(BaseModel):
    """``calls`` calls in ``seconds`` (wall), ``concurrency`` at a time."""

    model_config = ConfigDict(frozen=True)

    name: str
    calls: int
    failures: int
    concurrency: int
    seconds: float
    ops_per_second: float
    latency: LatencySummary | None
    #: Operations per second of every round, when this is the best of several.
    rounds_ops_per_second: tuple[float, ...] = ()

    @classmethod
    def from_durations(
        cls,
        name: str,
        durations: Sequence[float],
        seconds: float,
        *,
        concurrency: int = 1,
        failures: int = 0,
    ) -> Measurement:
        return cls(
            name=name,
            calls=len(durations),
            failures=failures,
            concurrency=concurrency,
            seconds=seconds,
            ops_per_second=rate(len(durations), seconds),
            latency=summarize(durations),
        )


def best_of(rounds: Sequence[Measurement]) -> Measurement:
    """The round with the most operations per second, listing every round's rate.

    Best-of-N (as ``timeit`` reports) keeps the figure least disturbed by other load on
    the machine; the other rounds stay visible in ``rounds_ops_per_second``.
    """
    if not rounds:
        raise ValueError("best of no rounds")
    if len({measurement.name for measurement in rounds}) != 1:
        raise ValueError("rounds of different measurements")
    best = max(rounds, key=lambda measurement: measurement.ops_per_second)
    rates = tuple(measurement.ops_per_second for measurement in rounds)
    return best.model_copy(update={"rounds_ops_per_second": rates})


def _check_bounds(calls: int, max_seconds: float, warmup: int, concurrency: int = 1) -> None:
    if calls < 1 or max_seconds <= 0 or warmup < 0 or concurrency < 1:
        raise ValueError("calls and concurrency must be >= 1, max_seconds > 0, warmup >= 0")


def measure_sync(
    name: str, call: Callable[[], object], *, calls: int, max_seconds: float, warmup: int = 0
) -> Measurement:
    """Time ``call()`` up to ``calls`` times or ``max_seconds``."""
    _check_bounds(calls, max_seconds, warmup)
    for _ in range(warmup):
        call()
    durations: list[float] = []
    start = time.perf_counter()
    deadline = start + max_seconds
    for _ in range(calls):
        before = time.perf_counter()
        call()
        after = time.perf_counter()
        durations.append(after - before)
        if after >= deadline:
            break
    return Measurement.from_durations(name, durations, time.perf_counter() - start)


async def measure_async(
    name: str,
    call: Callable[[], Awaitable[bool]],
    *,
    calls: int,
    max_seconds: float,
    warmup: int = 0,
    concurrency: int = 1,
) -> Measurement:
    """Await ``call()`` up to ``calls`` times or ``max_seconds``, ``concurrency`` at once.

    ``call`` returns whether the operation succeeded; failures are counted (and their
    durations kept: a failing call still took that long).
    """
    _check_bounds(calls, max_seconds, warmup, concurrency)
    for _ in range(warmup):
        await call()
    durations: list[float] = []
    failures = 0
    remaining = calls
    start = time.perf_counter()
    deadline = start + max_seconds

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            before = time.perf_counter()
            ok = await call()
            durations.append(time.perf_counter() - before)
            failures += not ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Measurement.from_durations(
        name,
        durations,
        time.perf_counter() - start,
        concurrency=concurrency,
        failures=failures,
    )
