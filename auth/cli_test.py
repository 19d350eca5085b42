"""auth.cli against an in-process server."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth import cli
from auth.api import InvalidCredentialsError
from auth.grpc_server import build_server
from auth.service import LocalAuthService
from auth.testing import fast_settings

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[str]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as service:
        server, port, _ = await build_server(service, port=0)
        await server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await server.stop(None)


async def _run(target: str, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    args = cli.parse_args(["--target", target, *argv])
    status = await cli.run(args, stdin=io.StringIO(stdin), stdout=out)
    return status, out.getvalue()


async def test_register_login_validate(target: str) -> None:
    status, out = await _run(
        target, "register", "--email", "cli@example.com", "--password-stdin", stdin=PASSWORD + "\n"
    )
    account = json.loads(out)
    assert status == 0 and account["email"] == "cli@example.com"

    status, out = await _run(
        target, "login", "--email", "cli@example.com", "--password-stdin", stdin=PASSWORD + "\n"
    )
    pair = json.loads(out)
    assert status == 0 and pair["user_id"] == account["user_id"]

    status, out = await _run(target, "validate", stdin=pair["access_token"] + "\n")
    assert status == 0 and json.loads(out)["user_id"] == account["user_id"]

    status, out = await _run(target, "validate", "--token", "not-a-token")
    assert status == 1 and json.loads(out)["error_code"] == "INVALID_FORMAT"


async def test_errors_are_typed(target: str) -> None:
    with pytest.raises(InvalidCredentialsError):
        await _run(target, "login", "--email", "none@example.com", "--password-stdin", stdin="x\n")


async def test_main_reports_errors_on_stderr(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong password\n"))
    argv = ["--target", target, "login", "--email", "nobody@example.com", "--password-stdin"]
    status = await asyncio.to_thread(cli.main, argv)
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_CREDENTIALS:")
    assert "wrong password" not in err
