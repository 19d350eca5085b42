"""``tools/bazel run //:client -- …``: a terminal client of the platform.

Subcommands (addresses default to the embedded server: ``--grpc 127.0.0.1:50051``,
``--ws ws://127.0.0.1:8000/ws``):

* ``demo`` - register (or, if the account exists, log in) a demo user over gRPC, connect
  over WebSocket with the token, start the ``assistant`` on a message that uses tools, and
  print every streamed event until ``agent_completed`` / ``agent_error``;
* ``register --email E --password P`` / ``login --email E --password P`` - over gRPC;
  ``login`` prints the access token (the point of the command) on stdout;
* ``run --agent NAME MESSAGE`` - run an agent as ``--email``/``--password`` (or
  ``--token``) and print its events.

The token travels in the WebSocket handshake as the ``jwt-auth`` + ``jwt.<base64url>``
subprotocols (``--auth-header`` sends ``Authorization: Bearer`` instead); never in the URL.
The exit status is 0 when the run completed, 1 when it ended with ``agent_error`` or could
not be started, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from auth.api import AccountExistsError, AuthError
from auth.grpc_client import ClientPolicy, GrpcAuthClient
from websocket.auth.credentials import encode_token_subprotocol

__all__ = ["DEMO_MESSAGE", "main", "parse_args"]

DEFAULT_GRPC = "127.0.0.1:50051"
DEFAULT_WS = "ws://127.0.0.1:8000/ws"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-2024"  # noqa: S105 - the public demo account's password
DEMO_MESSAGE = "remember that the launch is on Friday; what is 12*(3+4)?"
TERMINAL = ("agent_completed", "agent_error")
AUTH_SUBPROTOCOL = "jwt-auth"
_TEXT_LIMIT = 160

_STYLE = {
    "agent_started": "bold cyan",
    "agent_thinking": "magenta",
    "tool_executing": "yellow",
    "tool_completed": "green",
    "agent_completed": "bold green",
    "agent_error": "bold red",
    "progress_update": "blue",
}


def _short(value: object, limit: int = _TEXT_LIMIT) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(event: dict[str, Any]) -> str:
    """The key payload fields of one event, as ``name=value`` pairs."""
    payload: dict[str, Any] = event.get("payload") or {}
    kind = event.get("type")
    keys: tuple[str, ...]
    if kind == "agent_started":
        keys = ("status", "message")
    elif kind == "agent_thinking":
        keys = ("step", "thought")
    elif kind == "tool_executing":
        keys = ("tool_name", "tool_input")
    elif kind == "tool_completed":
        keys = ("tool_name", "success", "execution_time_ms", "result_summary")
    elif kind == "agent_completed":
        keys = ("success", "result")
    elif kind == "agent_error":
        keys = ("error_type", "error_message", "recoverable")
    else:
        keys = ("progress_percentage", "current_step", "message")
    parts = []
    for key in keys:
        if key not in payload:
            continue
        value = payload[key]
        if key == "execution_time_ms" and isinstance(value, int | float):
            value = f"{value:.1f}"
        if key == "result" and isinstance(value, dict) and "answer" in value:
            value = value["answer"]
        parts.append(f"{key}={_short(value)}")
    return "  ".join(parts)


def print_event(console: Console, event: dict[str, Any]) -> None:
    kind = str(event.get("type"))
    style = _STYLE.get(kind, "white")
    seq = event.get("seq", "-")
    console.print(
        f"[dim]seq {seq:>3}[/dim]  [{style}]{kind:<16}[/{style}] {escape(describe(event))}",
        soft_wrap=True,
        highlight=False,
    )


# -- accounts over gRPC ----------------------------------------------------------------------


async def _register_or_login(grpc: str, email: str, password: str, console: Console) -> str:
    """An access token for the account, registering it first if it does not exist."""
    async with GrpcAuthClient(grpc, policy=ClientPolicy(deadline_seconds=10.0)) as auth:
        try:
            account = await auth.register(email, password, "Demo user")
            console.print(f"registered [bold]{escape(email)}[/bold] as {account.user_id}")
        except AccountExistsError:
            console.print(f"[dim]{escape(email)} exists; logging in[/dim]")
        pair = await auth.login(email, password)
        return pair.access_token


async def _login(grpc: str, email: str, password: str) -> str:
    async with GrpcAuthClient(grpc, policy=ClientPolicy(deadline_seconds=10.0)) as auth:
        pair = await auth.login(email, password)
        return pair.access_token


# -- a run over WebSocket --------------------------------------------------------------------


async def _connect(ws_url: str, token: str, *, auth_header: bool) -> ClientConnection:
    if auth_header:
        return await connect(ws_url, additional_headers=[("Authorization", f"Bearer {token}")])
    return await connect(
        ws_url,
        subprotocols=[Subprotocol(AUTH_SUBPROTOCOL), Subprotocol(encode_token_subprotocol(token))],
    )


async def stream_run(
    ws_url: str,
    token: str,
    agent: str,
    message: str,
    console: Console,
    *,
    auth_header: bool = False,
    limit_seconds: float = 120.0,
) -> bool:
    """Connect, start the run, print its events; True when it completed."""
    ws = await _connect(ws_url, token, auth_header=auth_header)
    try:
        async with asyncio.timeout(limit_seconds):
            welcome = json.loads(await ws.recv())
            if welcome.get("type") != "authentication_success":
                console.print(f"[bold red]refused[/bold red] {escape(_short(welcome))}")
                return False
            console.print(
                f"connected as {welcome['user_id']} ({welcome['connection_id']}) to {ws_url}"
            )
            await ws.send(json.dumps({"type": "start_agent", "agent": agent, "message": message}))
            run_id: str | None = None
            while True:
                frame = json.loads(await ws.recv())
                kind = frame.get("type")
                if kind == "run_accepted":
                    run_id = frame["run_id"]
                    console.print(
                        f"run [bold]{run_id}[/bold] accepted (thread {frame['thread_id']})"
                    )
                    continue
                if kind == "error":
                    console.print(
                        f"[bold red]error[/bold red] {frame.get('error_code')}: "
                        f"{escape(str(frame.get('message')))}"
                    )
                    return False
                if run_id is None or frame.get("run_id") != run_id:
                    continue
                print_event(console, frame)
                if kind in TERMINAL:
                    return bool(kind == "agent_completed")
    finally:
        await ws.close()


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="client", description=__doc__.split("\n")[0])
    parser.add_argument("--grpc", default=DEFAULT_GRPC, help=f"gRPC address ({DEFAULT_GRPC})")
    parser.add_argument("--ws", default=DEFAULT_WS, help=f"WebSocket URL ({DEFAULT_WS})")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="register/login, run the assistant, print events")
    demo.add_argument("--email", default=DEMO_EMAIL)
    demo.add_argument("--password", default=DEMO_PASSWORD)
    demo.add_argument("--message", default=DEMO_MESSAGE)
    demo.add_argument("--auth-header", action="store_true", help="send Authorization: Bearer")

    for name in ("register", "login"):
        command = commands.add_parser(name, help=f"{name} over gRPC")
        command.add_argument("--email", required=True)
        command.add_argument("--password", required=True)

    run = commands.add_parser("run", help="run an agent and print its events")
    run.add_argument("--agent", default="assistant")
    run.add_argument("--email")
    run.add_argument("--password")
    run.add_argument("--token", help="an access token instead of --email/--password")
    run.add_argument("--auth-header", action="store_true", help="send Authorization: Bearer")
    run.add_argument("message")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace, console: Console) -> int:
    if args.command == "demo":
        token = await _register_or_login(args.grpc, args.email, args.password, console)
        ok = await stream_run(
            args.ws, token, "assistant", args.message, console, auth_header=args.auth_header
        )
        return 0 if ok else 1
    if args.command == "register":
        async with GrpcAuthClient(args.grpc) as auth:
            account = await auth.register(args.email, args.password)
        console.print(f"registered {escape(account.email)} as {account.user_id}")
        return 0
    if args.command == "login":
        print(await _login(args.grpc, args.email, args.password))
        return 0
    if args.token:
        token = args.token
    elif args.email and args.password:
        token = await _login(args.grpc, args.email, args.password)
    else:
        console.print("run needs --token, or --email and --password")
        return 2
    ok = await stream_run(
        args.ws, token, args.agent, args.message, console, auth_header=args.auth_header
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        return asyncio.run(_main(args, console))
    except AuthError as exc:
        console.print(
            f"[bold red]auth error[/bold red] {exc.error_code.value}: {escape(exc.message)}"
        )
    except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
        reason = escape(f"{type(exc).__name__}: {exc}")
        console.print(f"[bold red]connection failed[/bold red] {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
