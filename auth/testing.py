"""Test support for the auth package and for tests that compose it (``itests``).

* :func:`fast_settings` - settings with cheap argon2 parameters and roomy rate limits;
* :func:`forge_token` - build a JWS by hand (base64url + JSON + ``cryptography``), for the
  hostile tokens PyJWT refuses to make (``alg: none``, algorithm confusion, ``crit``...);
* :class:`AuthServerProcess` - run ``python -m auth.server_main`` as a child process on an
  ephemeral loopback port and learn its address from the ``LISTENING`` line.

Test-only: production code never imports this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pydantic import SecretStr

from auth.settings import Argon2Params, AuthSettings
from auth.token_format import b64url_encode

__all__ = [
    "FAST_ARGON2",
    "AuthServerProcess",
    "b64json",
    "fast_settings",
    "forge_token",
    "server_environment",
]

FAST_ARGON2 = Argon2Params(time_cost=1, memory_cost_kib=256, parallelism=1)

SigningKey = (
    ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes | None
)


def fast_settings(data_dir: Path, **overrides: Any) -> AuthSettings:
    """Settings for tests: low-cost argon2, generous per-client limits, one test service."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "argon2": FAST_ARGON2,
        "login_rate_limit_per_account": "20/minute",
        "login_rate_limit_per_client": "1000/minute",
        "register_rate_limit_per_client": "1000/minute",
        "service_credentials": {"svc-test": SecretStr("svc-test-secret-0123456789abcdef")},
    }
    values.update(overrides)
    return AuthSettings(**values)


def b64json(value: Mapping[str, Any] | str) -> str:
    raw = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return b64url_encode(raw.encode())


_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}


def forge_token(
    header: Mapping[str, Any] | str,
    payload: Mapping[str, Any] | str,
    *,
    key: SigningKey,
    alg: str | None = None,
) -> str:
    """Sign ``header.payload`` with ``key`` using ``alg`` (default: the header's ``alg``).

    ``alg`` may differ from the header's: that is how algorithm-confusion tokens are made.
    ``key=None`` gives an empty signature (``alg: none``).
    """
    algorithm = alg if alg is not None else (header["alg"] if not isinstance(header, str) else "")
    signing_input = f"{b64json(header)}.{b64json(payload)}".encode()
    signature = b""
    if key is None:
        signature = b""
    elif algorithm.startswith("HS"):
        if not isinstance(key, bytes):
            raise TypeError("HS* needs key bytes")
        digest = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}[
            algorithm[2:]
        ]
        signature = hmac.new(key, signing_input, digest).digest()
    elif algorithm == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise TypeError("EdDSA needs an Ed25519 key")
        signature = key.sign(signing_input)
    elif algorithm[:2] in ("RS", "PS"):
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("RS*/PS* need an RSA key")
        hash_algorithm = _HASHES[algorithm[2:]]
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if algorithm.startswith("RS")
            else padding.PSS(
                mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size
            )
        )
        signature = key.sign(signing_input, pad, hash_algorithm)
    elif algorithm.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("ES* needs an EC key")
        hash_algorithm = _HASHES[algorithm[2:]]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_algorithm)))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise ValueError(f"cannot forge {algorithm!r}")
    return f"{signing_input.decode()}.{b64url_encode(signature)}"


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child server: this interpreter's import path, fast argon2,
    the test service credentials, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.update(
        {
            "SSOT_AUTH_ARGON2_TIME_COST": str(FAST_ARGON2.time_cost),
            "SSOT_AUTH_ARGON2_MEMORY_COST_KIB": str(FAST_ARGON2.memory_cost_kib),
            "SSOT_AUTH_ARGON2_PARALLELISM": str(FAST_ARGON2.parallelism),
            "SSOT_AUTH_SERVICE_CREDENTIALS": json.dumps(
                {"svc-test": "svc-test-secret-0123456789abcdef"}
            ),
        }
    )
    env.update(extra or {})
    return env


class AuthServerProcess:
    """``python -m auth.server_main`` as a child process, for black-box tests.

    Synchronous (``subprocess``) so module-scoped fixtures can use it; async tests call
    :meth:`start` / :meth:`stop` through ``asyncio.to_thread``. The server's stderr (its
    JSON log) goes to ``log_path`` so a test can inspect it afterwards.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}-server.log"
        self._env = server_environment(env)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.address: str | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start and return ``host:port`` once the server prints its LISTENING line."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "auth.server_main",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=self._env,
            )
        try:
            line = self._read_listening_line()
        except BaseException:
            self.stop()
            raise
        self.address = line.removeprefix("LISTENING ")
        self.port = int(self.address.rsplit(":", 1)[1])
        return self.address

    def _read_listening_line(self) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("auth server did not start listening in time")
                if not selector.select(remaining):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(
                        f"auth server exited before listening (rc={process.wait()}): "
                        f"{self.log_text()[-2000:]}"
                    )
                buffer += chunk
                for raw in buffer.split(b"\n")[:-1]:
                    text = raw.decode(errors="replace").strip()
                    if text.startswith("LISTENING "):
                        return text

    def stop(self) -> int | None:
        """SIGTERM and wait for exit (SIGKILL if it hangs); returns the exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> AuthServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
