"""``time.now``: the current time in UTC, and optionally in an IANA time zone."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from dispatch.engine.api import PermissionGroup, ToolAnnotations, ToolInputRejected
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = ["TimeNowInput", "TimeNowOutput", "time_now_tool"]

# IANA names: segments of letters, digits, '_', '+', '-' separated by '/'. Refusing
# anything else (dots, absolute paths) before zoneinfo sees the name.
_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


class TimeNowInput(ToolInput):
    timezone: str | None = Field(
        default=None,
        max_length=64,
        pattern=_ZONE_PATTERN,
        description="An IANA time zone name such as Europe/Berlin; UTC when omitted",
    )


class TimeNowOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    utc: str = Field(description="ISO-8601 UTC timestamp")
    unix_seconds: float
    timezone: str
    local: str = Field(description="ISO-8601 timestamp in the requested zone, with offset")
    utc_offset: str


def _offset(moment: datetime) -> str:
    text = moment.strftime("%z")  # +0100
    return f"{text[:3]}:{text[3:]}" if len(text) == 5 else text


async def _now(invocation: ToolInvocation, args: TimeNowInput) -> TimeNowOutput:
    now = datetime.now(UTC)
    zone_name = args.timezone or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolInputRejected(
            "UNKNOWN_TIMEZONE", f"{zone_name!r} is not a known IANA time zone"
        ) from None
    local = now.astimezone(zone)
    return TimeNowOutput(
        utc=now.isoformat(),
        unix_seconds=now.timestamp(),
        timezone=zone_name,
        local=local.isoformat(),
        utc_offset=_offset(local),
    )


def time_now_tool() -> Tool[TimeNowInput]:
    return define_tool(
        name="time.now",
        title="Current time",
        description="The current time as ISO-8601 in UTC and, if asked, in an IANA time zone.",
        group=PermissionGroup.BASIC,
        input_model=TimeNowInput,
        output_model=TimeNowOutput,
        handler=_now,
        annotations=ToolAnnotations(
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
        timeout_seconds=5.0,
    )
