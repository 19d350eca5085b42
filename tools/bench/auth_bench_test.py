"""The auth benchmark's ratios, options and JSON shape."""

from __future__ import annotations

import json

import pytest

from tools.bench.auth_bench import (
    ALGORITHMS,
    AlgorithmResult,
    AuthDocument,
    AuthParameters,
    auth_ratios,
    parse_args,
)
from tools.bench.machine import collect_machine
from tools.bench.timing import Measurement


def measured(name: str, ops: float) -> Measurement:
    return Measurement(
        name=name,
        calls=100,
        failures=0,
        concurrency=1,
        seconds=100 / ops,
        ops_per_second=ops,
        latency=None,
    )


def test_ratios_are_ours_over_each_baseline() -> None:
    ratios = auth_ratios(
        validate_token=measured("v", 300.0),
        echo=measured("e", 3000.0),
        verifier=measured("t", 8000.0),
        authenticate=measured("a", 500.0),
        decode=measured("d", 10000.0),
    )
    assert ratios.validate_token_vs_grpc_echo == pytest.approx(0.1)
    assert ratios.verifier_vs_pyjwt_decode == pytest.approx(0.8)
    assert ratios.authenticate_token_vs_pyjwt_decode == pytest.approx(0.05)


def test_a_zero_baseline_gives_no_ratio() -> None:
    ratios = auth_ratios(
        validate_token=measured("v", 300.0),
        echo=measured("e", 1.0).model_copy(update={"ops_per_second": 0.0}),
        verifier=measured("t", 1.0),
        authenticate=measured("a", 1.0),
        decode=measured("d", 1.0),
    )
    assert ratios.validate_token_vs_grpc_echo is None


def test_document_shape() -> None:
    result = AlgorithmResult(
        algorithm="EdDSA",
        token_bytes=600,
        request_bytes=605,
        grpc_validate_token=measured("grpc_validate_token", 300.0),
        grpc_echo=measured("grpc_echo", 3000.0),
        local_verifier=measured("local_verifier", 8000.0),
        local_authenticate_token=measured("local_authenticate_token", 500.0),
        pyjwt_decode=measured("pyjwt_decode", 10000.0),
        ratios=auth_ratios(
            validate_token=measured("v", 300.0),
            echo=measured("e", 3000.0),
            verifier=measured("t", 8000.0),
            authenticate=measured("a", 500.0),
            decode=measured("d", 10000.0),
        ),
    )
    document = AuthDocument(
        started_at="2025-01-31T12:00:00+00:00",
        duration_seconds=30.0,
        machine=collect_machine(libraries=("pyjwt",)),
        load_average_end=(0.5, 0.5, 0.5),
        parameters=AuthParameters(
            algorithms=ALGORITHMS,
            calls=2000,
            seconds=5.0,
            warmup=100,
            rounds=3,
            concurrency=8,
            rsa_key_size=3072,
        ),
        results=[result],
    )
    parsed = json.loads(document.model_dump_json())
    assert parsed["benchmark"] == "auth"
    assert parsed["parameters"]["algorithms"] == ["EdDSA", "RS256", "HS256"]
    (only,) = parsed["results"]
    assert only["ratios"]["validate_token_vs_grpc_echo"] == pytest.approx(0.1)
    assert only["grpc_echo"]["ops_per_second"] == 3000.0
    assert parsed["machine"]["libraries"]["pyjwt"][0].isdigit()


def test_algorithms_default_to_all_three() -> None:
    assert parse_args([]).algorithms == ["EdDSA", "RS256", "HS256"]
    assert parse_args(["--algorithms", "HS256"]).algorithms == ["HS256"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--algorithms", "none"],
        ["--calls", "0"],
        ["--seconds", "0"],
        ["--concurrency", "0"],
        ["--rounds", "0"],
        ["--rsa-key-size", "1024"],
    ],
)
def test_out_of_bounds_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
