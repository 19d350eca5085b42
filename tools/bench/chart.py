"""PNG charts of the benchmark results (matplotlib, Agg: no display needed).

Figures are built with :class:`matplotlib.figure.Figure` directly, never through
``pyplot``'s global state, so drawing a chart has no side effect on the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

from tools.bench.stats import percentile

__all__ = ["Series", "draw_auth_chart", "draw_build_chart", "draw_users_chart"]

_OURS = "#1f77b4"
_BASE = "#7f7f7f"


@dataclass(frozen=True, slots=True)
class Series:
    """One side of the users comparison: per-event latencies (ms) and receive offsets
    (seconds since the first request), plus its event rate."""

    label: str
    latencies_ms: Sequence[float]
    received_at: Sequence[float]
    events_per_second: float


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    count = len(ordered)
    return ordered, [(index + 1) / count for index in range(count)]


def draw_users_chart(path: Path, ours: Series, baseline: Series, subtitle: str) -> Path:
    """Event rate, latency percentiles and CDF, and delivery over time, ours vs baseline."""
    figure = Figure(figsize=(12, 8), layout="constrained")
    figure.suptitle(f"Concurrent users: platform vs plain websockets\n{subtitle}", fontsize=11)
    rate_ax, pct_ax, cdf_ax, time_ax = figure.subplots(2, 2).flat

    bars = rate_ax.bar(
        [ours.label, baseline.label],
        [ours.events_per_second, baseline.events_per_second],
        color=[_OURS, _BASE],
    )
    rate_ax.bar_label(bars, fmt="%.0f")
    rate_ax.set_yscale("log")
    rate_ax.set_ylabel("events / s (log)")
    rate_ax.set_title("delivered events per second")

    labels = ["p50", "p95", "p99"]
    width = 0.38
    for offset, series, color in ((-width / 2, ours, _OURS), (width / 2, baseline, _BASE)):
        if not series.latencies_ms:
            continue
        values = [percentile(series.latencies_ms, q) for q in (50, 95, 99)]
        positions = [index + offset for index in range(len(labels))]
        pct_ax.bar(positions, values, width, label=series.label, color=color)
    pct_ax.set_xticks(range(len(labels)), labels)
    pct_ax.set_yscale("log")
    pct_ax.set_ylabel("ms (log)")
    pct_ax.set_title("event latency, emitted -> received")
    pct_ax.legend()

    for series, color in ((ours, _OURS), (baseline, _BASE)):
        if series.latencies_ms:
            xs, ys = _cdf(series.latencies_ms)
            cdf_ax.plot(xs, ys, label=series.label, color=color)
        if series.received_at:
            xs, ys = _cdf(series.received_at)
            time_ax.plot(xs, [y * len(xs) for y in ys], label=series.label, color=color)
    cdf_ax.set_xscale("log")
    cdf_ax.set_xlabel("latency, ms (log)")
    cdf_ax.set_ylabel("fraction of events")
    cdf_ax.set_title("latency distribution")
    cdf_ax.legend()
    time_ax.set_xlabel("seconds since the first request")
    time_ax.set_ylabel("events received")
    time_ax.set_title("delivery over time")
    time_ax.legend()
    return _save(figure, path)


def draw_auth_chart(path: Path, rates: Mapping[str, Mapping[str, float]], subtitle: str) -> Path:
    """Operations per second per algorithm: one group of bars per algorithm, one bar per
    measurement (``rates[algorithm][measurement]``)."""
    figure = Figure(figsize=(12, 6), layout="constrained")
    figure.suptitle(f"Token validation: ours vs bare baselines\n{subtitle}", fontsize=11)
    axes = figure.subplots(1, 1)
    algorithms = list(rates)
    measurements = sorted({name for values in rates.values() for name in values})
    width = 0.8 / max(len(measurements), 1)
    for index, name in enumerate(measurements):
        positions = [
            a + (index - (len(measurements) - 1) / 2) * width for a in range(len(algorithms))
        ]
        values = [rates[algorithm].get(name, 0.0) for algorithm in algorithms]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks(range(len(algorithms)), algorithms)
    axes.set_yscale("log")
    axes.set_ylabel("operations / s (log)")
    axes.legend(fontsize=8)
    return _save(figure, path)


def draw_build_chart(path: Path, seconds: Mapping[str, float], subtitle: str) -> Path:
    """Wall time of each build phase."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    figure.suptitle(f"bazel test: cold, cached, one package touched\n{subtitle}", fontsize=11)
    axes = figure.subplots(1, 1)
    bars = axes.bar(list(seconds), list(seconds.values()), color=_OURS)
    axes.bar_label(bars, fmt="%.1f s")
    axes.set_ylabel("wall time, s")
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
