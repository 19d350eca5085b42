"""Command line for people and scripts: ``python -m auth.cli [--target HOST:PORT] COMMAND``.

Commands (output is one JSON object on stdout; errors are ``error: CODE: message`` on
stderr with exit status 1):

* ``register --email E [--display-name N]`` - create an account;
* ``login --email E`` - print a token pair (for scripts: it contains the tokens);
* ``validate [--token T]`` - validate an access token (exit status 1 if it is rejected).

Passwords are read from the terminal without echo, or from the first line of stdin with
``--password-stdin``; never from the command line, where other users could see them. A
token may be passed on stdin instead of ``--token`` for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from typing import TextIO

from auth.api import AuthContextKind, AuthError
from auth.grpc_client import ClientPolicy, GrpcAuthClient

__all__ = ["main", "run"]


def _password(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.password_stdin:
        return stdin.readline().rstrip("\r\n")
    return getpass.getpass("password: ")


async def run(args: argparse.Namespace, *, stdin: TextIO, stdout: TextIO) -> int:
    policy = ClientPolicy(deadline_seconds=args.timeout, attempt_timeout_seconds=args.timeout)
    async with GrpcAuthClient(args.target, policy=policy) as client:
        if args.command == "register":
            account = await client.register(args.email, _password(args, stdin), args.display_name)
            stdout.write(account.model_dump_json() + "\n")
            return 0
        if args.command == "login":
            pair = await client.login(args.email, _password(args, stdin))
            stdout.write(json.dumps(pair.model_dump(mode="json")) + "\n")
            return 0
        token = args.token if args.token is not None else stdin.readline().strip()
        result = await client.authenticate_token(token, AuthContextKind.REST_API)
        stdout.write(result.model_dump_json() + "\n")
        return 0 if result.success else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="auth.cli", description="auth service client")
    parser.add_argument("--target", default="127.0.0.1:8081", help="auth server HOST:PORT")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per command")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="create an account")
    register.add_argument("--email", required=True)
    register.add_argument("--display-name", default="")
    register.add_argument("--password-stdin", action="store_true")
    login = commands.add_parser("login", help="obtain a token pair")
    login.add_argument("--email", required=True)
    login.add_argument("--password-stdin", action="store_true")
    validate = commands.add_parser("validate", help="validate an access token")
    validate.add_argument("--token", help="the token (default: first line of stdin)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args, stdin=sys.stdin, stdout=sys.stdout))
    except AuthError as exc:
        sys.stderr.write(f"error: {exc.error_code.value}: {exc.message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
