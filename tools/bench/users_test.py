"""The users benchmark's pure parts: parsing, latency, ratios, options, JSON shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tools.bench.leaks import DeliveryReport
from tools.bench.machine import collect_machine
from tools.bench.stats import LatencySummary
from tools.bench.users import (
    BenchmarkError,
    Parameters,
    PlatformSide,
    ServerMemory,
    Side,
    UsersDocument,
    compute_ratios,
    parse_args,
    parse_listening,
    received_latency,
)


def test_parse_listening_reads_both_addresses() -> None:
    grpc, ws = parse_listening("grpc=127.0.0.1:40001 ws=ws://127.0.0.1:40002/ws\n")
    assert grpc == "127.0.0.1:40001"
    assert ws == "ws://127.0.0.1:40002/ws"


@pytest.mark.parametrize("line", ["grpc=- ws=ws://127.0.0.1:1/ws", "grpc=1.2.3.4:5 ws=-", "?"])
def test_parse_listening_refuses_a_role_without_both(line: str) -> None:
    with pytest.raises(BenchmarkError, match="no gRPC and WebSocket"):
        parse_listening(line)


def test_received_latency_is_receive_time_minus_the_envelope_timestamp() -> None:
    emitted = datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)
    latency = received_latency("2025-01-31T12:00:00.123456Z", emitted.timestamp() + 0.25)
    assert latency == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("stamp", [None, 17, "yesterday", "2025-01-31T12:00:00"])
def test_received_latency_ignores_missing_or_zoneless_timestamps(stamp: object) -> None:
    assert received_latency(stamp, 1e9) is None


def summary(p50: float, p99: float) -> LatencySummary:
    return LatencySummary(count=10, mean_ms=p50, p50_ms=p50, p95_ms=p99, p99_ms=p99, max_ms=p99)


def memory(per_connection: float) -> ServerMemory:
    return ServerMemory(
        pid=1,
        rss_before_connect_bytes=1000,
        rss_after_connect_bytes=1000 + int(per_connection * 10),
        rss_after_runs_bytes=5000,
        per_connection_bytes=per_connection,
    )


def side(events_per_second: float, p50: float, p99: float, per_connection: float) -> Side:
    return Side(
        connections=10,
        connect_seconds=0.5,
        events_received=80,
        bytes_received=8000,
        wall_seconds=80 / events_per_second,
        events_per_second=events_per_second,
        latency=summary(p50, p99),
        memory=memory(per_connection),
        timed_out_connections=0,
    )


def platform_side() -> PlatformSide:
    return PlatformSide(
        **side(200.0, 2.0, 30.0, 60_000.0).model_dump(),
        register_seconds=1.0,
        runs_per_second=25.0,
        start_refusals=0,
        delivery=DeliveryReport(
            runs_started=10,
            runs_completed=10,
            runs_failed=0,
            runs_incomplete=0,
            events_received=80,
            wrong_user_events=0,
            foreign_run_events=0,
            runs_with_sequence_gaps=0,
            duplicate_run_ids=0,
        ),
    )


def test_ratios_are_ours_over_the_baseline() -> None:
    ratios = compute_ratios(platform_side(), side(20_000.0, 1.0, 5.0, 40_000.0))
    assert ratios.events_per_second == pytest.approx(0.01)
    assert ratios.latency_p50 == pytest.approx(2.0)
    assert ratios.latency_p99 == pytest.approx(6.0)
    assert ratios.memory_per_connection == pytest.approx(1.5)


def test_ratios_without_a_baseline_figure_are_none() -> None:
    empty = side(1.0, 1.0, 1.0, 0.0).model_copy(
        update={"events_per_second": 0.0, "latency": None, "memory": None}
    )
    ratios = compute_ratios(platform_side(), empty)
    assert ratios.events_per_second is None
    assert ratios.latency_p50 is None
    assert ratios.memory_per_connection is None


def test_the_document_carries_leaks_ratio_machine_and_parameters() -> None:
    ours, base = platform_side(), side(20_000.0, 1.0, 5.0, 40_000.0)
    ratios = compute_ratios(ours, base)
    document = UsersDocument(
        started_at="2025-01-31T12:00:00+00:00",
        duration_seconds=12.5,
        machine=collect_machine(libraries=("websockets",)),
        load_average_end=(1.0, 1.0, 1.0),
        parameters=Parameters(
            users=10,
            runs_per_user=1,
            agent="assistant",
            message="what is 2*3?",
            server="spawned",
            server_log_level="info",
            connect_concurrency=50,
            timeout_seconds=300.0,
        ),
        wrong_user_events=ours.delivery.wrong_user_events,
        events_per_second_ratio=ratios.events_per_second,
        platform=ours,
        baseline=base,
        ratio_to_baseline=ratios,
        chart="bench-results/users.png",
    )
    parsed = json.loads(document.model_dump_json())
    assert parsed["benchmark"] == "users"
    assert parsed["wrong_user_events"] == 0
    assert parsed["events_per_second_ratio"] == pytest.approx(0.01)
    assert parsed["machine"]["usable_cores"] >= 1
    assert "websockets" in parsed["machine"]["libraries"]
    assert parsed["parameters"]["users"] == 10
    for key in ("runs_per_second", "events_per_second", "latency", "memory", "delivery"):
        assert key in parsed["platform"], key
    assert set(parsed["platform"]["latency"]) == {
        "count",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
    }
    assert parsed["platform"]["memory"]["per_connection_bytes"] == 60_000.0
    assert parsed["baseline"]["events_per_second"] == 20_000.0
    assert UsersDocument.model_validate_json(document.model_dump_json()) == document


def test_defaults_are_two_hundred_users_one_run_each() -> None:
    args = parse_args([])
    assert (args.users, args.runs, args.url) == (200, 1, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--users", "1001"],
        ["--users", "0"],
        ["--runs", "11"],
        ["--url", "ws://127.0.0.1:1/ws"],
        ["--timeout", "0"],
    ],
)
def test_out_of_bounds_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
