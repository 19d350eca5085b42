"""WebSocketAuthSettings: defaults, environment, and refusal of unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from websocket.auth.expiry import ExpiryPolicy
from websocket.auth.settings import WebSocketAuthSettings


def test_defaults_follow_the_design() -> None:
    settings = WebSocketAuthSettings()
    assert settings.max_connections_per_user == 5
    assert settings.allowed_origins == ()
    assert settings.expiry_policy() == ExpiryPolicy(warning_seconds=60, grace_seconds=30)


def test_environment_configures_origins_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSOT_WS_AUTH_ALLOWED_ORIGINS", '["https://App.example.com:443"]')
    monkeypatch.setenv("SSOT_WS_AUTH_MAX_CONNECTIONS_PER_USER", "3")
    settings = WebSocketAuthSettings()
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.max_connections_per_user == 3


@pytest.mark.parametrize(
    "values",
    [
        {"allowed_origins": ("null",)},
        {"allowed_origins": ("*",)},
        {"max_connections_per_user": 0},
        {"max_token_bytes": 10},
        {"expiry_grace_seconds": -1},
    ],
)
def test_unsafe_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WebSocketAuthSettings.model_validate(values)
