"""``tools/bazel run //tools/bench:users -- [--users 200] [--runs 1]``: concurrent users.

N users (default 200, at most 1,000) are registered over gRPC; each opens one WebSocket
to the gateway (a real ``websockets`` client, ``Authorization: Bearer``) and starts M agent
runs (default 1) whose message makes the offline ``local`` LLM call tools (``notes.add``
and ``calculator``). Measured while the runs go, from the first ``start_agent`` to the last
event received:

* runs/s (completed runs) and events/s (run events received by all users);
* event latency p50/p95/p99: the envelope's ``timestamp`` (set when the server emitted the
  event) to the moment the client read it, on the same machine clock;
* the server's memory per connection: its resident set (``/proc/<pid>/status``) after all
  users connected minus before, divided by N;
* events that reached a wrong user (must be 0): every event a connection receives must
  belong to a run that connection's user started (:mod:`tools.bench.leaks`).

Then the baseline, in the same run: a plain ``websockets`` server
(:mod:`tools.bench.ws_baseline`) sends each of N connections the same number of frames of
the same sizes as that user received from the platform; our events/s is reported as a
ratio of the baseline's.

By default the server is started here as a child process (``python -m server.main
--grpc-port 0 --ws-port 0 --data-dir <tmp>``, cheap password hashing and loose
registration limits, since accounts are set-up and not measured). ``--url`` and ``--grpc``
target a server already running (give ``--server-pid`` to measure its memory); it must
allow N registrations from one client and N x M concurrent runs (``SSOT_MAX_RUNS_TOTAL``,
``SSOT_MAX_RUNS_PER_USER``). Everything stays on loopback, every phase is bounded by
``--timeout``, and the program stops by itself.

Prints one JSON document on stdout (machine, versions, parameters, results, ratios) and
writes a PNG chart (``--chart``; default ``bench-results/users.png`` in the workspace).
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from websockets.asyncio.client import ClientConnection, connect

from auth.grpc_client import ClientPolicy, GrpcAuthClient
from context.log_config import configure_logging
from tools.bench.chart import Series, draw_users_chart
from tools.bench.children import ChildServer
from tools.bench.leaks import TERMINAL_EVENTS, DeliveryLedger, DeliveryReport
from tools.bench.machine import (
    MachineInfo,
    collect_machine,
    load_average,
    raise_open_files_limit,
    rss_bytes,
)
from tools.bench.stats import LatencySummary, rate, ratio, summarize
from tools.bench.ws_baseline import GO

__all__ = [
    "DEFAULT_MESSAGE",
    "MAX_RUNS",
    "MAX_USERS",
    "BenchmarkError",
    "Parameters",
    "PlatformSide",
    "Ratios",
    "ServerMemory",
    "Side",
    "UsersDocument",
    "main",
    "parse_args",
    "parse_listening",
    "received_latency",
]

MAX_USERS = 1000
MAX_RUNS = 10
DEFAULT_MESSAGE = "remember that bench user {user} takes tea at {run}; what is 6*(3+4)?"
_PASSWORD_BYTES = 18
_T = TypeVar("_T")
_LISTENING = re.compile(r"^grpc=(?P<grpc>\S+) ws=(?P<ws>\S+)$")


class BenchmarkError(Exception):
    """The benchmark could not run (server refused, a phase timed out ...)."""


# -- the document --------------------------------------------------------------------------


class Parameters(BaseModel):
    model_config = ConfigDict(frozen=True)

    users: int
    runs_per_user: int
    agent: str
    message: str
    server: Literal["spawned", "external"]
    server_log_level: str | None
    connect_concurrency: int
    timeout_seconds: float
    websocket_compression: str = "library defaults (permessage-deflate) on both sides"


class ServerMemory(BaseModel):
    """Resident memory of the server process around the connection phase."""

    model_config = ConfigDict(frozen=True)

    pid: int
    rss_before_connect_bytes: int
    rss_after_connect_bytes: int
    rss_after_runs_bytes: int
    per_connection_bytes: float


class Side(BaseModel):
    """What one server (ours or the baseline) delivered to the N connections."""

    model_config = ConfigDict(frozen=True)

    connections: int
    connect_seconds: float
    events_received: int
    bytes_received: int
    #: First request sent -> last event received.
    wall_seconds: float
    events_per_second: float
    latency: LatencySummary | None
    memory: ServerMemory | None
    timed_out_connections: int


class PlatformSide(Side):
    register_seconds: float
    runs_per_second: float
    start_refusals: int
    #: ``error_code`` of each refused ``start_agent`` -> count.
    start_refusal_codes: dict[str, int] = Field(default_factory=dict)
    #: ``error_type`` of each ``agent_error`` -> count.
    run_error_types: dict[str, int] = Field(default_factory=dict)
    delivery: DeliveryReport


class Ratios(BaseModel):
    """Ours divided by the baseline (``None`` where the baseline measured zero)."""

    model_config = ConfigDict(frozen=True)

    events_per_second: float | None
    latency_p50: float | None
    latency_p99: float | None
    memory_per_connection: float | None


class UsersDocument(BaseModel):
    """The users benchmark's JSON output."""

    model_config = ConfigDict(frozen=True)

    benchmark: Literal["users"] = "users"
    started_at: str
    duration_seconds: float
    machine: MachineInfo
    load_average_end: tuple[float, float, float]
    parameters: Parameters
    #: Events that reached a user who did not start their run (must be 0).
    wrong_user_events: int
    #: Our events/s divided by the plain websockets baseline's.
    events_per_second_ratio: float | None
    platform: PlatformSide
    baseline: Side
    ratio_to_baseline: Ratios
    chart: str | None = None
    notes: list[str] = Field(default_factory=list)


def compute_ratios(ours: Side, baseline: Side) -> Ratios:
    def latency(pick: Callable[[LatencySummary], float]) -> float | None:
        if ours.latency is None or baseline.latency is None:
            return None
        return ratio(pick(ours.latency), pick(baseline.latency))

    memory = None
    if ours.memory is not None and baseline.memory is not None:
        memory = ratio(ours.memory.per_connection_bytes, baseline.memory.per_connection_bytes)
    return Ratios(
        events_per_second=ratio(ours.events_per_second, baseline.events_per_second),
        latency_p50=latency(lambda s: s.p50_ms),
        latency_p99=latency(lambda s: s.p99_ms),
        memory_per_connection=memory,
    )


# -- small pure helpers --------------------------------------------------------------------


def parse_listening(rest: str) -> tuple[str, str]:
    """``grpc=<address> ws=<url>`` of the server's ``LISTENING`` line."""
    match = _LISTENING.match(rest.strip())
    if match is None or match["grpc"] == "-" or match["ws"] == "-":
        raise BenchmarkError(f"the server announced no gRPC and WebSocket address: {rest!r}")
    return match["grpc"], match["ws"]


def received_latency(timestamp: object, received_wall: float) -> float | None:
    """Seconds from an envelope's ISO-8601 ``timestamp`` to ``received_wall`` (epoch
    seconds); ``None`` when the timestamp is missing or not ISO-8601 with a zone."""
    if not isinstance(timestamp, str):
        return None
    try:
        emitted = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if emitted.tzinfo is None:
        return None
    return received_wall - emitted.astimezone(UTC).timestamp()


def _say(message: str) -> None:
    print(f"users: {message}", file=sys.stderr, flush=True)


def _frame_bytes(raw: str | bytes) -> int:
    return len(raw.encode()) if isinstance(raw, str) else len(raw)


async def _bounded_gather(
    factories: Sequence[Callable[[], Awaitable[_T]]], concurrency: int
) -> list[_T]:
    """Run the coroutines made by ``factories`` with at most ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def one(factory: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(one(factory) for factory in factories)))


# -- connections ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Connection:
    ws: ClientConnection
    user_id: str
    sizes: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    run_errors: Counter[str] = field(default_factory=Counter)
    timed_out: bool = False

    def record(self, raw: str | bytes, frame: dict[str, Any], wall: float, offset: float) -> None:
        self.sizes.append(_frame_bytes(raw))
        self.received_at.append(offset)
        latency = received_latency(frame.get("timestamp"), wall)
        if latency is not None:
            self.latencies.append(latency)


async def _open_platform(url: str, token: str) -> _Connection:
    ws = await connect(url, additional_headers=[("Authorization", f"Bearer {token}")])
    welcome = json.loads(await ws.recv())
    if welcome.get("type") != "authentication_success":
        await ws.close()
        raise BenchmarkError(f"connection refused: {welcome.get('error_code')}")
    return _Connection(ws=ws, user_id=str(welcome["user_id"]))


async def _open_plain(url: str) -> _Connection:
    return _Connection(ws=await connect(url), user_id="")


async def _close_all(connections: Sequence[_Connection]) -> None:
    async with asyncio.timeout(60):
        await asyncio.gather(*(c.ws.close() for c in connections), return_exceptions=True)


async def _drive_platform(
    conn: _Connection,
    *,
    agent: str,
    messages: Sequence[str],
    ledger: DeliveryLedger,
    t0: float,
    deadline: float,
) -> None:
    """Start the runs, then read until each accepted run has ended (or the deadline)."""
    for index, message in enumerate(messages):
        start = {"type": "start_agent", "agent": agent, "message": message}
        await conn.ws.send(json.dumps({**start, "client_msg_id": f"bench-{index}"}))
    accepted: set[str] = set()
    answered = ended = 0
    try:
        async with asyncio.timeout_at(deadline):
            while answered < len(messages) or ended < len(accepted):
                raw = await conn.ws.recv()
                wall, offset = time.time(), time.monotonic() - t0
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "run_accepted":
                    accepted.add(str(frame["run_id"]))
                    ledger.started(conn.user_id, str(frame["run_id"]))
                    answered += 1
                elif kind == "error":
                    conn.refusals[str(frame.get("error_code"))] += 1
                    answered += 1
                elif "run_id" in frame and "seq" in frame:
                    ledger.received(conn.user_id, frame)
                    conn.record(raw, frame, wall, offset)
                    if kind == "agent_error":
                        payload = frame.get("payload") or {}
                        conn.run_errors[str(payload.get("error_type"))] += 1
                    if kind in TERMINAL_EVENTS and frame["run_id"] in accepted:
                        ended += 1
    except TimeoutError:
        conn.timed_out = True


async def _drive_plain(conn: _Connection, sizes: Sequence[int], t0: float, deadline: float) -> None:
    await conn.ws.send(json.dumps({"type": GO, "sizes": list(sizes)}))
    try:
        async with asyncio.timeout_at(deadline):
            for _ in sizes:
                raw = await conn.ws.recv()
                wall, offset = time.time(), time.monotonic() - t0
                conn.record(raw, json.loads(raw), wall, offset)
    except TimeoutError:
        conn.timed_out = True


def _memory(
    pid: int | None, before: int | None, after: int | None, final: int | None, n: int
) -> ServerMemory | None:
    if pid is None or before is None or after is None or final is None or n == 0:
        return None
    return ServerMemory(
        pid=pid,
        rss_before_connect_bytes=before,
        rss_after_connect_bytes=after,
        rss_after_runs_bytes=final,
        per_connection_bytes=(after - before) / n,
    )


def _rss(pid: int | None) -> int | None:
    return rss_bytes(pid) if pid is not None else None


def _side_figures(
    connections: Sequence[_Connection], t0: float
) -> tuple[int, int, float, LatencySummary | None]:
    events = sum(len(c.sizes) for c in connections)
    size = sum(sum(c.sizes) for c in connections)
    last = max((max(c.received_at) for c in connections if c.received_at), default=0.0)
    latencies = [value for c in connections for value in c.latencies]
    return events, size, last, summarize(latencies)


# -- the two sides -------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    side: Side
    connections: list[_Connection]


async def register_users(
    grpc: str, count: int, concurrency: int, bound_seconds: float
) -> list[str]:
    """Register and log in ``count`` fresh users; their access tokens."""
    tag = secrets.token_hex(4)
    password = secrets.token_urlsafe(_PASSWORD_BYTES)
    policy = ClientPolicy(
        deadline_seconds=bound_seconds,
        attempt_timeout_seconds=bound_seconds,
        max_attempts=1,
        breaker_failure_threshold=count + 1,
    )
    async with GrpcAuthClient(grpc, policy=policy) as auth:

        async def one(index: int) -> str:
            email = f"bench-{tag}-{index}@example.com"
            await auth.register(email, password, f"bench user {index}")
            pair = await auth.login(email, password)
            return pair.access_token

        async with asyncio.timeout(bound_seconds):
            await auth.wait_until_ready()
            return await _bounded_gather(
                [functools.partial(one, index) for index in range(count)], concurrency
            )


async def measure_platform(
    ws_url: str,
    tokens: Sequence[str],
    *,
    pid: int | None,
    runs: int,
    agent: str,
    message: str,
    connect_concurrency: int,
    bound_seconds: float,
    register_seconds: float,
) -> tuple[PlatformSide, list[_Connection]]:
    rss_before = _rss(pid)
    started = time.monotonic()
    async with asyncio.timeout(bound_seconds):
        connections = await _bounded_gather(
            [functools.partial(_open_platform, ws_url, token) for token in tokens],
            connect_concurrency,
        )
    connect_seconds = time.monotonic() - started
    rss_after = _rss(pid)
    _say(f"{len(connections)} users connected in {connect_seconds:.1f}s; starting runs")
    ledger = DeliveryLedger()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_seconds
        t0 = time.monotonic()
        await asyncio.gather(
            *(
                _drive_platform(
                    conn,
                    agent=agent,
                    messages=[message.format(user=i, run=r) for r in range(runs)],
                    ledger=ledger,
                    t0=t0,
                    deadline=deadline,
                )
                for i, conn in enumerate(connections)
            )
        )
        rss_final = _rss(pid)
    finally:
        await _close_all(connections)
    events, size, wall, latency = _side_figures(connections, t0)
    delivery = ledger.report()
    side = PlatformSide(
        connections=len(connections),
        connect_seconds=connect_seconds,
        events_received=events,
        bytes_received=size,
        wall_seconds=wall,
        events_per_second=rate(events, wall),
        latency=latency,
        memory=_memory(pid, rss_before, rss_after, rss_final, len(connections)),
        timed_out_connections=sum(c.timed_out for c in connections),
        register_seconds=register_seconds,
        runs_per_second=rate(delivery.runs_completed, wall),
        start_refusals=sum(sum(c.refusals.values()) for c in connections),
        start_refusal_codes=dict(sum((c.refusals for c in connections), Counter[str]())),
        run_error_types=dict(sum((c.run_errors for c in connections), Counter[str]())),
        delivery=delivery,
    )
    return side, connections


async def measure_baseline(
    url: str,
    sizes: Sequence[Sequence[int]],
    *,
    pid: int,
    connect_concurrency: int,
    bound_seconds: float,
) -> tuple[Side, list[_Connection]]:
    rss_before = rss_bytes(pid)
    started = time.monotonic()
    async with asyncio.timeout(bound_seconds):
        connections = await _bounded_gather(
            [functools.partial(_open_plain, url) for _ in sizes], connect_concurrency
        )
    connect_seconds = time.monotonic() - started
    rss_after = rss_bytes(pid)
    try:
        deadline = asyncio.get_running_loop().time() + bound_seconds
        t0 = time.monotonic()
        await asyncio.gather(
            *(
                _drive_plain(conn, own, t0, deadline)
                for conn, own in zip(connections, sizes, strict=True)
            )
        )
        rss_final = rss_bytes(pid)
    finally:
        await _close_all(connections)
    events, size, wall, latency = _side_figures(connections, t0)
    side = Side(
        connections=len(connections),
        connect_seconds=connect_seconds,
        events_received=events,
        bytes_received=size,
        wall_seconds=wall,
        events_per_second=rate(events, wall),
        latency=latency,
        memory=_memory(pid, rss_before, rss_after, rss_final, len(connections)),
        timed_out_connections=sum(c.timed_out for c in connections),
    )
    return side, connections


# -- the program ---------------------------------------------------------------------------


def _server_environment(users: int, runs: int) -> dict[str, str]:
    """A spawned server: cheap password hashing and loose registration limits (accounts
    are set-up here, not measured) and room for every run at once."""
    return {
        "SSOT_AUTH_ARGON2_TIME_COST": "1",
        "SSOT_AUTH_ARGON2_MEMORY_COST_KIB": "1024",
        "SSOT_AUTH_ARGON2_PARALLELISM": "1",
        "SSOT_AUTH_REGISTER_RATE_LIMIT_PER_CLIENT": f"{users * 2}/minute",
        "SSOT_AUTH_LOGIN_RATE_LIMIT_PER_CLIENT": f"{users * 2}/minute",
        "SSOT_MAX_RUNS_PER_USER": str(max(3, runs)),
        "SSOT_MAX_RUNS_TOTAL": str(max(200, users * runs)),
        "SSOT_MAX_DATA_SCOPES_PER_USER": str(max(10, 2 * runs)),
    }


def default_chart_path() -> Path:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    return Path(workspace or ".") / "bench-results" / "users.png"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="users", description="Concurrent WebSocket users running agents, vs a baseline."
    )
    parser.add_argument("--users", type=int, default=200, help="users, 1-1000 (default 200)")
    parser.add_argument("--runs", type=int, default=1, help="runs per user, 1-10 (default 1)")
    parser.add_argument("--agent", default="assistant")
    parser.add_argument(
        "--message",
        default=DEFAULT_MESSAGE,
        help="run message; {user} and {run} are replaced (default uses two tools)",
    )
    parser.add_argument("--url", help="WebSocket URL of a running server (default: spawn one)")
    parser.add_argument("--grpc", help="gRPC address of that server (with --url)")
    parser.add_argument("--server-pid", type=int, help="its pid, to measure its memory")
    parser.add_argument("--server-log-level", default="info", help="spawned server's log level")
    parser.add_argument("--server-log", type=Path, help="keep the spawned server's log here")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--register-concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound of each phase, s")
    parser.add_argument("--chart", type=Path, help="PNG path (default bench-results/users.png)")
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS:
        parser.error(f"--users must be within 1..{MAX_USERS}")
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be within 1..{MAX_RUNS}")
    if args.url and not args.grpc:
        parser.error("--url needs --grpc (users are registered over gRPC)")
    if not 1 <= args.connect_concurrency <= 1000 or not 1 <= args.register_concurrency <= 1000:
        parser.error("concurrency must be within 1..1000")
    if not 1.0 <= args.timeout <= 3600.0:
        parser.error("--timeout must be within 1..3600 seconds")
    return args


async def _platform_phase(
    args: argparse.Namespace, work: Path
) -> tuple[PlatformSide, list[_Connection]]:
    server: ChildServer | None = None
    try:
        if args.url:
            grpc, ws_url, pid = args.grpc, args.url, args.server_pid
        else:
            server = ChildServer(
                "server.main",
                [
                    "--grpc-port=0",
                    "--ws-port=0",
                    f"--data-dir={work / 'server'}",
                    f"--log-level={args.server_log_level}",
                ],
                log_path=args.server_log or work / "server.log",
                env=_server_environment(args.users, args.runs),
            ).start()
            grpc, ws_url = parse_listening(server.listening)
            pid = server.pid
            _say(f"server pid {pid} listening: gRPC {grpc}, WebSocket {ws_url}")
        _say(f"registering {args.users} users")
        started = time.monotonic()
        tokens = await register_users(grpc, args.users, args.register_concurrency, args.timeout)
        register_seconds = time.monotonic() - started
        return await measure_platform(
            ws_url,
            tokens,
            pid=pid,
            runs=args.runs,
            agent=args.agent,
            message=args.message,
            connect_concurrency=args.connect_concurrency,
            bound_seconds=args.timeout,
            register_seconds=register_seconds,
        )
    finally:
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                _say(f"the server exited with {code}: {server.log(1500)}")


async def run(args: argparse.Namespace) -> UsersDocument:
    started_at = datetime.now(UTC).isoformat()
    clock = time.monotonic()
    raise_open_files_limit(args.users * 4 + 256)
    machine = collect_machine()
    with tempfile.TemporaryDirectory(prefix="ssot-bench-users-") as tmp:
        work = Path(tmp)
        ours, our_connections = await _platform_phase(args, work)
        _say(
            f"platform: {ours.delivery.runs_completed} runs completed, "
            f"{ours.events_received} events; running the baseline"
        )
        with ChildServer(
            "tools.bench.ws_baseline", ["--port=0"], log_path=work / "baseline.log"
        ) as baseline_server:
            base, base_connections = await measure_baseline(
                baseline_server.listening,
                [c.sizes for c in our_connections],
                pid=baseline_server.pid,
                connect_concurrency=args.connect_concurrency,
                bound_seconds=args.timeout,
            )
    parameters = Parameters(
        users=args.users,
        runs_per_user=args.runs,
        agent=args.agent,
        message=args.message,
        server="external" if args.url else "spawned",
        server_log_level=None if args.url else args.server_log_level,
        connect_concurrency=args.connect_concurrency,
        timeout_seconds=args.timeout,
    )
    ratios = compute_ratios(ours, base)
    notes = [
        "Latency is envelope timestamp (server clock) to client read (same machine clock).",
        "Baseline: plain websockets server, same frame count and sizes per connection.",
    ]
    if ours.timed_out_connections or base.timed_out_connections:
        notes.append("Some connections hit --timeout before receiving everything.")
    if ours.start_refusals or ours.delivery.runs_failed:
        notes.append(
            f"The server refused {ours.start_refusals} run starts {ours.start_refusal_codes} "
            f"and {ours.delivery.runs_failed} runs failed {ours.run_error_types}: it was "
            "saturated (--server-log PATH keeps its log)."
        )
    document = UsersDocument(
        started_at=started_at,
        duration_seconds=time.monotonic() - clock,
        machine=machine,
        load_average_end=load_average(),
        parameters=parameters,
        wrong_user_events=ours.delivery.wrong_user_events,
        events_per_second_ratio=ratios.events_per_second,
        platform=ours,
        baseline=base,
        ratio_to_baseline=ratios,
        notes=notes,
    )
    if not args.no_chart:
        path = (args.chart or default_chart_path()).resolve()
        load = ", ".join(f"{value:.2f}" for value in machine.load_average_start)
        subtitle = (
            f"{args.users} users x {args.runs} runs; {machine.usable_cores} cores, "
            f"load average at start {load}"
        )
        draw_users_chart(
            path,
            Series(
                "platform",
                [v * 1000 for c in our_connections for v in c.latencies],
                [v for c in our_connections for v in c.received_at],
                ours.events_per_second,
            ),
            Series(
                "plain websockets",
                [v * 1000 for c in base_connections for v in c.latencies],
                [v for c in base_connections for v in c.received_at],
                base.events_per_second,
            ),
            subtitle,
        )
        document = document.model_copy(update={"chart": str(path)})
    return document


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Library log lines go to stderr: stdout carries the JSON document only.
    configure_logging("warning", log_format="console")
    try:
        document = asyncio.run(run(args))
    except (BenchmarkError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"users: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(document.model_dump_json(indent=2))
    if document.chart:
        _say(f"chart written to {document.chart}")
    return 0 if document.wrong_user_events == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
