"""configure_logging: context-bound JSON lines, and no local variable in any traceback."""

from __future__ import annotations

import json

import pytest
import structlog

from context import UserExecutionContext, context_scope
from context.log_config import LogFormat, configure_logging


def _fail_holding_a_secret() -> None:
    # Built at run time, so the value is in a local variable but not in the source line.
    access_token = "-".join(["secret", "material"])  # noqa: F841
    raise ValueError("the operation failed")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_never_show_local_variables(
    log_format: LogFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(log_format=log_format)
    try:
        _fail_holding_a_secret()
    except ValueError:
        structlog.get_logger("test").exception("operation_failed")
    err = capsys.readouterr().err
    assert "operation_failed" in err
    assert "the operation failed" in err
    assert "secret-material" not in err


def test_json_lines_carry_the_bound_request_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json")
    ctx = UserExecutionContext.from_request("usr_01jdq3v9x4s7k2m8n6p0r5t1wz")
    with context_scope(ctx):
        structlog.get_logger("test").info("served")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "served"
    assert (line["user_id"], line["run_id"], line["request_id"]) == (
        ctx.user_id,
        ctx.run_id,
        ctx.request_id,
    )
