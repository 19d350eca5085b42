"""No password, token, refresh token, secret or private key ever reaches a log (acceptance 6).

Everything logged while a full set of operations runs - through the service directly and
through the gRPC server, client and interceptor in the same process - is captured from
structlog and from stdlib logging at DEBUG (SQLAlchemy, aiosqlite, gRPC included) and
searched for every secret those operations handled.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.api import AuthError, InvalidCredentialsError, RateLimitedError, ServiceToken, TokenPair
from auth.grpc_client import GrpcAuthClient
from auth.grpc_server import build_server
from auth.service import LocalAuthService
from auth.testing import fast_settings
from auth.token_format import b64url_encode

PASSWORD = "Pa55word-that-must-never-be-logged"
SERVICE_SECRET = "svc-test-secret-0123456789abcdef"


def _private_key_forms(service: LocalAuthService) -> list[str]:
    signer = service.key_store.signer()
    assert isinstance(signer.private_key, ed25519.Ed25519PrivateKey)
    key = signer.private_key
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    body = "".join(pem.splitlines()[1:-1])
    return [body, b64url_encode(raw), raw.hex(), "PRIVATE KEY"]


async def test_no_secret_in_any_log_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [PASSWORD, SERVICE_SECRET]
    with structlog.testing.capture_logs() as events:
        settings = fast_settings(tmp_path / "auth", login_rate_limit_per_account="3/minute")
        async with await LocalAuthService.create(settings) as service:
            secrets += _private_key_forms(service)
            server, port, _ = await build_server(service, port=0)
            await server.start()
            try:
                async with GrpcAuthClient(f"127.0.0.1:{port}") as client:
                    await client.register("logs@example.com", PASSWORD, "Logs")
                    pair = await client.login("logs@example.com", PASSWORD)
                    rotated = await client.refresh(pair.refresh_token)
                    assert (await client.authenticate_token(rotated.access_token)).success
                    tampered = rotated.access_token[:-6] + "AAAAAA"
                    assert not (await client.authenticate_token(tampered)).success
                    with pytest.raises(AuthError):
                        await client.refresh(pair.refresh_token)  # reuse: session revoked
                    second = await service.login("logs@example.com", PASSWORD)
                    await service.logout(second.refresh_token)
                    service_token = await client.issue_service_token("svc-test", SERVICE_SECRET)
                    with pytest.raises(InvalidCredentialsError):
                        await client.issue_service_token("svc-test", SERVICE_SECRET + "x")
                    with pytest.raises(AuthError):
                        await client.login("logs@example.com", PASSWORD + "!")

                    async def forged() -> str:
                        return tampered

                    async with GrpcAuthClient(client.target, token_provider=forged) as intruder:
                        with pytest.raises(AuthError):
                            await intruder.revoke_user_tokens(pair.user_id)
                    for _ in range(2):  # over the rate limit
                        with pytest.raises(RateLimitedError):
                            await client.login("logs@example.com", PASSWORD)
            finally:
                await server.stop(None)

    tokens = [
        pair.access_token,
        pair.refresh_token,
        rotated.access_token,
        rotated.refresh_token,
        second.access_token,
        second.refresh_token,
        service_token.token,
        tampered,
    ]
    secrets += tokens
    secrets += [token.rsplit(".", 1)[1] for token in tokens]  # signatures alone

    structlog_text = "\n".join(repr(event) for event in events)
    stdlib_text = "\n".join(
        f"{record.name} {record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records
    )
    assert "auth_login_succeeded" in structlog_text  # capture really worked
    assert "auth_refresh_reuse_detected" in structlog_text
    assert caplog.records  # libraries logged too (SQL at DEBUG)
    for secret in secrets:
        assert secret not in structlog_text
        assert secret not in stdlib_text
        assert secret not in caplog.text


def test_models_and_records_hide_secrets_in_repr() -> None:
    now = datetime.now(UTC)
    pair = TokenPair(
        user_id="usr_x",
        session_id="ses_x",
        access_token="access.secret.value",
        refresh_token="refresh.secret.value",
        access_expires_at=now,
        refresh_expires_at=now,
    )
    token = ServiceToken(service_id="svc", token="service.secret.value", expires_at=now)
    assert "secret" not in repr(pair) and "secret" not in str(pair)
    assert "secret" not in repr(token)
    settings = fast_settings(Path("/nonexistent"), hs256_secret="h" * 40)
    assert SERVICE_SECRET not in repr(settings) and "h" * 40 not in repr(settings)
