"""GatewaySettings: the design's defaults, and refusal of invalid values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from websocket.gateway.settings import GatewaySettings


def test_defaults_follow_the_design() -> None:
    settings = GatewaySettings()
    assert (settings.host, settings.port, settings.path) == ("127.0.0.1", 8000, "/ws")
    assert settings.max_frame_bytes == 64 * 1024


def test_environment_sets_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSOT_WS_PORT", "0")
    monkeypatch.setenv("SSOT_WS_MESSAGE_RATE_LIMIT", "5/second")
    settings = GatewaySettings()
    assert settings.port == 0
    assert settings.message_rate_limit == "5/second"


@pytest.mark.parametrize(
    "values",
    [
        {"message_rate_limit": "lots"},
        {"message_rate_limit": ""},
        {"port": 70000},
        {"path": "ws"},
        {"max_frame_bytes": 10},
    ],
)
def test_invalid_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings.model_validate(values)
