"""AuthSettings from the environment, validation, secrecy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from auth.api import TokenType
from auth.settings import AuthSettings


def test_environment_configures_the_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSOT_AUTH_ISSUER", "https://auth.example")
    monkeypatch.setenv("SSOT_AUTH_ACCESS_TTL_SECONDS", "120")
    monkeypatch.setenv("SSOT_AUTH_ALGORITHM", "RS256")
    monkeypatch.setenv("SSOT_AUTH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SSOT_AUTH_SERVICE_CREDENTIALS", '{"backend": "s3cr3t-s3cr3t-s3cr3t"}')
    monkeypatch.setenv("SSOT_AUTH_ARGON2_TIME_COST", "2")
    settings = AuthSettings()
    assert settings.issuer == "https://auth.example"
    assert settings.ttl_for(TokenType.ACCESS) == 120
    assert settings.algorithm == "RS256"
    assert settings.argon2.time_cost == 2
    assert settings.service_credentials["backend"].get_secret_value() == "s3cr3t-s3cr3t-s3cr3t"
    assert "s3cr3t" not in repr(settings)
    assert settings.resolved_database_url() == f"sqlite+aiosqlite:///{tmp_path.resolve()}/auth.db"


def test_flags_style_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSOT_AUTH_DATA_DIR", "/from/env")
    assert AuthSettings(data_dir=Path("/from/flag")).data_dir == Path("/from/flag")


def test_defaults_are_asymmetric_and_distinct_per_type() -> None:
    settings = AuthSettings()
    assert settings.algorithm == "EdDSA"
    assert len({settings.audience_for(kind) for kind in TokenType}) == 3
    assert (
        settings.max_token_lifetime_seconds
        == settings.refresh_ttl_seconds + settings.leeway_seconds
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"access_audience": "same", "refresh_audience": "same"},
        {"hs256_secret": "too-short"},
        {"algorithm": "none"},
        {"algorithm": "HS512"},
        {"leeway_seconds": 3600},
        {"rsa_key_size": 1024},
    ],
)
def test_unsafe_configuration_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AuthSettings(**overrides)
