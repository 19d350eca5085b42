"""``tools/bazel run //tools/bench:auth``: token validation, ours vs bare baselines.

For each signing algorithm (EdDSA, RS256, HS256; ``--algorithms``):

* **over gRPC** - ``ValidateToken`` against the real auth server (``python -m
  auth.server_main`` as a child process, keys and SQLite of its own) vs ``/bench.Echo/Echo``
  on a bare ``grpc.aio`` server (:mod:`tools.bench.grpc_echo`, another child) with a
  request of the same size; ``--concurrency`` calls in flight. The ratio shows what token
  verification, the revocation lookup and the servicer add on top of gRPC itself.
* **in process** - the auth package's :class:`~auth.tokens.TokenVerifier` (format, header,
  pinned algorithm, signature, typed claims, time, issuer, type, audience) and
  :meth:`LocalAuthService.authenticate_token` (that plus the revocation lookup in its
  store) vs a bare PyJWT ``jwt.decode`` of the same token with the same key, checking
  signature, expiry, audience and issuer.

Every ratio is *ours / baseline* in operations per second (1.0 = as fast as the baseline,
0.5 = half as fast). Each measurement stops at ``--calls`` calls or ``--seconds``,
whichever comes first, after ``--warmup`` untimed calls; ``--rounds`` interleaved rounds of
each comparison are run and the best round of each side is kept (all rounds are listed).
Prints one JSON document and
writes a PNG chart (``--chart``; default ``bench-results/auth.png`` in the workspace).
Everything stays on loopback and under a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import grpc
import grpc.aio
import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from auth import auth_pb2, auth_pb2_grpc
from auth.api import AuthContextKind, TokenType
from auth.grpc_client import ClientPolicy, GrpcAuthClient
from auth.service import LocalAuthService
from auth.settings import Argon2Params, AuthSettings, SigningAlgorithm
from auth.tokens import TokenVerifier
from context.log_config import configure_logging
from tools.bench.chart import draw_auth_chart
from tools.bench.children import ChildServer
from tools.bench.grpc_echo import ECHO_METHOD
from tools.bench.machine import MachineInfo, collect_machine, load_average
from tools.bench.stats import ratio
from tools.bench.timing import Measurement, best_of, measure_async, measure_sync

__all__ = [
    "ALGORITHMS",
    "AlgorithmResult",
    "AuthDocument",
    "AuthParameters",
    "AuthRatios",
    "auth_ratios",
    "main",
    "parse_args",
]

ALGORITHMS: tuple[SigningAlgorithm, ...] = ("EdDSA", "RS256", "HS256")
_EMAIL = "bench@example.com"
_CHEAP_ARGON2 = {
    "SSOT_AUTH_ARGON2_TIME_COST": "1",
    "SSOT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
    "SSOT_AUTH_ARGON2_PARALLELISM": "1",
}


class AuthParameters(BaseModel):
    model_config = ConfigDict(frozen=True)

    algorithms: tuple[SigningAlgorithm, ...]
    calls: int
    seconds: float
    warmup: int
    rounds: int
    concurrency: int
    rsa_key_size: int


class AuthRatios(BaseModel):
    """Ours / baseline, in operations per second."""

    model_config = ConfigDict(frozen=True)

    validate_token_vs_grpc_echo: float | None
    verifier_vs_pyjwt_decode: float | None
    authenticate_token_vs_pyjwt_decode: float | None


class AlgorithmResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    algorithm: SigningAlgorithm
    token_bytes: int
    request_bytes: int
    grpc_validate_token: Measurement
    grpc_echo: Measurement
    local_verifier: Measurement
    local_authenticate_token: Measurement
    pyjwt_decode: Measurement
    ratios: AuthRatios


class AuthDocument(BaseModel):
    """The auth benchmark's JSON output."""

    model_config = ConfigDict(frozen=True)

    benchmark: Literal["auth"] = "auth"
    started_at: str
    duration_seconds: float
    machine: MachineInfo
    load_average_end: tuple[float, float, float]
    parameters: AuthParameters
    results: list[AlgorithmResult]
    chart: str | None = None
    notes: list[str] = Field(default_factory=list)


def auth_ratios(
    *,
    validate_token: Measurement,
    echo: Measurement,
    verifier: Measurement,
    authenticate: Measurement,
    decode: Measurement,
) -> AuthRatios:
    return AuthRatios(
        validate_token_vs_grpc_echo=ratio(validate_token.ops_per_second, echo.ops_per_second),
        verifier_vs_pyjwt_decode=ratio(verifier.ops_per_second, decode.ops_per_second),
        authenticate_token_vs_pyjwt_decode=ratio(
            authenticate.ops_per_second, decode.ops_per_second
        ),
    )


def _say(message: str) -> None:
    print(f"auth: {message}", file=sys.stderr, flush=True)


def _password() -> str:
    return secrets.token_urlsafe(18)


async def _local(
    algorithm: SigningAlgorithm, work: Path, args: argparse.Namespace
) -> tuple[str, Measurement, Measurement, Measurement]:
    """The in-process measurements; returns the token too (for its size)."""
    secret = SecretStr(secrets.token_urlsafe(48)) if algorithm == "HS256" else None
    settings = AuthSettings(
        data_dir=work / "local",
        algorithm=algorithm,
        hs256_secret=secret,
        rsa_key_size=args.rsa_key_size,
        argon2=Argon2Params(time_cost=1, memory_cost_kib=1024, parallelism=1),
    )
    service = await LocalAuthService.create(settings)
    try:
        password = _password()
        await service.register(_EMAIL, password)
        token = (await service.login(_EMAIL, password)).access_token
        kid = str(jwt.get_unverified_header(token)["kid"])
        key = service.key_store.verification_key(kid)
        if key is None:
            raise RuntimeError("the signing key of a fresh token is unknown")
        verifier = TokenVerifier(
            issuer=settings.issuer,
            audiences={kind: settings.audience_for(kind) for kind in TokenType},
            leeway_seconds=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
        )

        def verify() -> object:
            checked, header = verifier.parse(token)
            resolved = service.key_store.verification_key(header.kid)
            assert resolved is not None
            return verifier.verify(checked, header, resolved, (TokenType.ACCESS,))

        audience = settings.audience_for(TokenType.ACCESS)

        def decode() -> object:
            return jwt.decode(
                token, key.key, algorithms=[key.alg], audience=audience, issuer=settings.issuer
            )

        async def authenticate() -> bool:
            result = await service.authenticate_token(token, AuthContextKind.GRPC)
            return result.success

        bounds = {"calls": args.calls, "max_seconds": args.seconds, "warmup": args.warmup}
        verified, authenticated, decoded = [], [], []
        for _ in range(args.rounds):  # interleaved, so drifting load hits all three alike
            verified.append(measure_sync("local_verifier", verify, **bounds))
            authenticated.append(
                await measure_async("local_authenticate_token", authenticate, **bounds)
            )
            decoded.append(measure_sync("pyjwt_decode", decode, **bounds))
        return token, best_of(verified), best_of(authenticated), best_of(decoded)
    finally:
        await service.close()


async def _grpc(
    algorithm: SigningAlgorithm, work: Path, echo_address: str, args: argparse.Namespace
) -> tuple[int, Measurement, Measurement]:
    """ValidateToken on a real auth server vs the echo server; returns the request size."""
    env = dict(_CHEAP_ARGON2)
    env["SSOT_AUTH_ALGORITHM"] = algorithm
    env["SSOT_AUTH_RSA_KEY_SIZE"] = str(args.rsa_key_size)
    if algorithm == "HS256":
        env["SSOT_AUTH_HS256_SECRET"] = secrets.token_urlsafe(48)
    with ChildServer(
        "auth.server_main",
        ["--port=0", f"--data-dir={work / 'server'}", "--log-level=warning"],
        log_path=work / "auth-server.log",
        env=env,
    ) as server:
        address = server.listening
        password = _password()
        async with GrpcAuthClient(address, policy=ClientPolicy(deadline_seconds=30.0)) as client:
            await client.register(_EMAIL, password)
            token = (await client.login(_EMAIL, password)).access_token
        request = auth_pb2.ValidateTokenRequest(
            token=token, context_kind=auth_pb2.CONTEXT_KIND_GRPC
        )
        payload = request.SerializeToString()
        bounds = {
            "calls": args.calls,
            "max_seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
        }
        async with (
            grpc.aio.insecure_channel(address) as auth_channel,
            grpc.aio.insecure_channel(echo_address) as echo_channel,
        ):
            await asyncio.wait_for(auth_channel.channel_ready(), 30)
            await asyncio.wait_for(echo_channel.channel_ready(), 30)
            stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
            echo_call: Callable[..., grpc.aio.UnaryUnaryCall[bytes, bytes]] = (
                echo_channel.unary_unary(ECHO_METHOD)
            )

            async def validate() -> bool:
                result = await stub.ValidateToken(request, timeout=30)
                return result.success

            async def echo() -> bool:
                answer = await echo_call(payload, timeout=30)
                return bool(answer == payload)

            validated, echoed = [], []
            for _ in range(args.rounds):
                validated.append(await measure_async("grpc_validate_token", validate, **bounds))
                echoed.append(await measure_async("grpc_echo", echo, **bounds))
    return len(payload), best_of(validated), best_of(echoed)


async def run(args: argparse.Namespace) -> AuthDocument:
    started_at = datetime.now(UTC).isoformat()
    clock = time.monotonic()
    machine = collect_machine()
    results: list[AlgorithmResult] = []
    with tempfile.TemporaryDirectory(prefix="ssot-bench-auth-") as tmp:
        work = Path(tmp)
        with ChildServer(
            "tools.bench.grpc_echo", ["--port=0"], log_path=work / "echo.log"
        ) as echo_server:
            for algorithm in args.algorithms:
                _say(f"{algorithm}: in process")
                token, verified, authenticated, decoded = await _local(
                    algorithm, work / algorithm, args
                )
                _say(f"{algorithm}: over gRPC")
                size, validated, echoed = await _grpc(
                    algorithm, work / algorithm, echo_server.listening, args
                )
                results.append(
                    AlgorithmResult(
                        algorithm=algorithm,
                        token_bytes=len(token.encode()),
                        request_bytes=size,
                        grpc_validate_token=validated,
                        grpc_echo=echoed,
                        local_verifier=verified,
                        local_authenticate_token=authenticated,
                        pyjwt_decode=decoded,
                        ratios=auth_ratios(
                            validate_token=validated,
                            echo=echoed,
                            verifier=verified,
                            authenticate=authenticated,
                            decode=decoded,
                        ),
                    )
                )
    document = AuthDocument(
        started_at=started_at,
        duration_seconds=time.monotonic() - clock,
        machine=machine,
        load_average_end=load_average(),
        parameters=AuthParameters(
            algorithms=tuple(args.algorithms),
            calls=args.calls,
            seconds=args.seconds,
            warmup=args.warmup,
            rounds=args.rounds,
            concurrency=args.concurrency,
            rsa_key_size=args.rsa_key_size,
        ),
        results=results,
        notes=[
            "Ratios are ours / baseline in operations per second (best of --rounds each).",
            "gRPC: servers are child processes; the client is this process.",
            "local_authenticate_token includes the revocation lookup in SQLite.",
        ],
    )
    if not args.no_chart:
        path = (args.chart or _default_chart_path()).resolve()
        load = ", ".join(f"{value:.2f}" for value in machine.load_average_start)
        rates: dict[str, dict[str, float]] = {
            result.algorithm: {
                "gRPC ValidateToken": result.grpc_validate_token.ops_per_second,
                "gRPC bare echo": result.grpc_echo.ops_per_second,
                "local TokenVerifier": result.local_verifier.ops_per_second,
                "local authenticate_token": result.local_authenticate_token.ops_per_second,
                "bare jwt.decode": result.pyjwt_decode.ops_per_second,
            }
            for result in results
        }
        draw_auth_chart(path, rates, f"{machine.usable_cores} cores, load average at start {load}")
        document = document.model_copy(update={"chart": str(path)})
    return document


def _default_chart_path() -> Path:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    return Path(workspace or ".") / "bench-results" / "auth.png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="auth", description="Token validation over gRPC and in process, vs baselines."
    )
    parser.add_argument(
        "--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS), metavar="ALG"
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="time bound per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--concurrency", type=int, default=8, help="gRPC calls in flight")
    parser.add_argument("--rsa-key-size", type=int, default=3072, help="RS256 key bits")
    parser.add_argument("--chart", type=Path, help="PNG path (default bench-results/auth.png)")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 1_000_000 or not 0 < args.seconds <= 600:
        parser.error("--calls must be within 1..1000000 and --seconds within (0, 600]")
    if not 0 <= args.warmup <= 100_000 or not 1 <= args.concurrency <= 1000:
        parser.error("--warmup must be within 0..100000 and --concurrency within 1..1000")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be within 1..20")
    if args.rsa_key_size < 2048:
        parser.error("--rsa-key-size must be at least 2048")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Library log lines go to stderr: stdout carries the JSON document only.
    configure_logging("warning", log_format="console")
    try:
        document = asyncio.run(run(args))
    except (OSError, RuntimeError, TimeoutError, grpc.RpcError) as exc:
        print(f"auth: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(document.model_dump_json(indent=2))
    if document.chart:
        _say(f"chart written to {document.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
