"""Signing keys: generation, persistence under the data dir, rotation and JWKS.

Each key is one JSON file ``<data_dir>/keys/<kid>.json`` (mode 0600, written atomically).
The ``kid`` of an asymmetric key is its RFC 7638 JWK thumbprint. Exactly one key signs;
rotation makes a new signer and retires the old one, whose private half is deleted at once
while its public half keeps verifying until every token it could have signed has expired
(``verify_until``). Each key pins its algorithm: verification never takes the algorithm
from a token header.

HS256 is supported only when configured explicitly; its secret never appears in the JWKS.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from auth.api import JsonWebKey, JsonWebKeySet
from auth.token_format import KID_PATTERN, b64url_decode, b64url_encode

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "KeyRecord",
    "KeyStore",
    "VerificationKey",
    "jwk_thumbprint",
    "public_jwk",
    "verification_key_from_jwk",
]

log = structlog.get_logger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset({"EdDSA", "RS256"})
_ALGORITHMS = ASYMMETRIC_ALGORITHMS | {"HS256"}

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """What verification needs: the key and the one algorithm it may be used with."""

    kid: str
    alg: str
    key: PublicKey | bytes


@dataclass(frozen=True, slots=True)
class KeyRecord:
    kid: str
    alg: str
    created_at: float
    public_key: PublicKey | None
    private_key: PrivateKey | None = None
    secret: bytes | None = None
    retired_at: float | None = None
    verify_until: float | None = None

    @property
    def can_sign(self) -> bool:
        return self.retired_at is None and (self.private_key is not None or self.secret is not None)

    def verification_key(self) -> VerificationKey:
        key: PublicKey | bytes | None = self.secret if self.alg == "HS256" else self.public_key
        if key is None:
            raise ValueError(f"key {self.kid} has no verification material")
        return VerificationKey(kid=self.kid, alg=self.alg, key=key)

    def signing_key(self) -> PrivateKey | bytes:
        key: PrivateKey | bytes | None = self.secret if self.alg == "HS256" else self.private_key
        if key is None or self.retired_at is not None:
            raise ValueError(f"key {self.kid} cannot sign")
        return key

    def __repr__(self) -> str:  # never show key material
        return f"KeyRecord(kid={self.kid!r}, alg={self.alg!r}, retired_at={self.retired_at!r})"


def _jwk_members(key: PublicKey) -> dict[str, str]:
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    numbers = key.public_numbers()
    return {
        "e": b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        "kty": "RSA",
        "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
    }


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 of the required members, sorted, no whitespace."""
    canonical = json.dumps(_jwk_members(key), sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def public_jwk(kid: str, alg: str, key: PublicKey) -> JsonWebKey:
    return JsonWebKey(kid=kid, alg=alg, use="sig", **_jwk_members(key))


def verification_key_from_jwk(jwk: JsonWebKey) -> VerificationKey:
    """Build a pinned verification key from a published JWK; raises ValueError if unusable."""
    if not KID_PATTERN.fullmatch(jwk.kid):
        raise ValueError("malformed kid")
    if jwk.use != "sig":
        raise ValueError("not a signature key")
    key: PublicKey
    if jwk.alg == "EdDSA" and jwk.kty == "OKP" and jwk.crv == "Ed25519" and jwk.x:
        key = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk.x))
    elif jwk.alg == "RS256" and jwk.kty == "RSA" and jwk.n and jwk.e:
        n = int.from_bytes(b64url_decode(jwk.n), "big")
        e = int.from_bytes(b64url_decode(jwk.e), "big")
        if n.bit_length() < 2048:
            raise ValueError("RSA key too short")
        key = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        raise ValueError(f"unsupported key type/algorithm {jwk.kty}/{jwk.alg}")
    return VerificationKey(kid=jwk.kid, alg=jwk.alg, key=key)


class KeyStore:
    """The keys of one auth service, kept in a directory.

    Not thread-safe; used from one event loop. Several processes may share the directory:
    :meth:`reload` picks up keys another process created.
    """

    def __init__(
        self,
        directory: Path,
        *,
        algorithm: str = "EdDSA",
        rsa_key_size: int = 3072,
        hs256_secret: bytes | None = None,
        retired_key_lifetime: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``retired_key_lifetime``: seconds a retired key keeps verifying (the longest
        token lifetime plus leeway, so no token it signed outlives its key)."""
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {algorithm!r}")
        self._directory = directory
        self._algorithm = algorithm
        self._rsa_key_size = rsa_key_size
        self._hs256_secret = hs256_secret
        self._retired_key_lifetime = retired_key_lifetime
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}

    @property
    def algorithm(self) -> str:
        return self._algorithm

    # ----- loading and saving -------------------------------------------------------

    def load(self) -> None:
        """Load every key file, drop expired retired keys, create a signer if none fits."""
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keys = {}
        for path in sorted(self._directory.glob("*.json")):
            record = self._read(path)
            if record is not None:
                self._keys[record.kid] = record
        self.prune()
        signer = self._current_signer()
        if signer is None or signer.alg != self._algorithm:
            self._install_new_signer()

    def reload(self) -> None:
        """Re-read the directory (another process may have rotated)."""
        self.load()

    def _read(self, path: Path) -> KeyRecord | None:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            kid = str(data["kid"])
            alg = str(data["alg"])
            if not KID_PATTERN.fullmatch(kid) or alg not in _ALGORITHMS:
                raise ValueError("bad kid or alg")
            private_key: PrivateKey | None = None
            public_key: PublicKey | None = None
            secret: bytes | None = None
            if alg == "HS256":
                secret = b64url_decode(str(data["secret"]))
            else:
                loaded_public = serialization.load_pem_public_key(str(data["public_pem"]).encode())
                if not isinstance(loaded_public, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
                    raise ValueError("unsupported public key type")
                public_key = loaded_public
                if data.get("private_pem"):
                    loaded = serialization.load_pem_private_key(
                        str(data["private_pem"]).encode(), password=None
                    )
                    if not isinstance(loaded, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
                        raise ValueError("unsupported private key type")
                    private_key = loaded
            return KeyRecord(
                kid=kid,
                alg=alg,
                created_at=float(data["created_at"]),
                public_key=public_key,
                private_key=private_key,
                secret=secret,
                retired_at=_opt_float(data.get("retired_at")),
                verify_until=_opt_float(data.get("verify_until")),
            )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            log.warning("auth_key_file_unreadable", file=path.name, error=type(exc).__name__)
            return None

    def _write(self, record: KeyRecord) -> None:
        data: dict[str, Any] = {
            "kid": record.kid,
            "alg": record.alg,
            "created_at": record.created_at,
            "retired_at": record.retired_at,
            "verify_until": record.verify_until,
        }
        if record.secret is not None:
            data["secret"] = b64url_encode(record.secret)
        if record.public_key is not None:
            data["public_pem"] = record.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        if record.private_key is not None and record.retired_at is None:
            data["private_pem"] = record.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        path = self._directory / f"{record.kid}.json"
        tmp = path.with_name(f".{record.kid}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    # ----- key management -----------------------------------------------------------

    def _generate(self) -> KeyRecord:
        now = self._clock()
        if self._algorithm == "HS256":
            secret = self._hs256_secret or secrets.token_bytes(64)
            kid = b64url_encode(hashlib.sha256(b"ssot-hs256-kid:" + secret).digest())[:22]
            return KeyRecord(kid=kid, alg="HS256", created_at=now, public_key=None, secret=secret)
        private_key: PrivateKey
        if self._algorithm == "EdDSA":
            private_key = ed25519.Ed25519PrivateKey.generate()
        else:
            private_key = rsa.generate_private_key(
                public_exponent=65537, key_size=self._rsa_key_size
            )
        public_key = private_key.public_key()
        return KeyRecord(
            kid=jwk_thumbprint(public_key),
            alg=self._algorithm,
            created_at=now,
            public_key=public_key,
            private_key=private_key,
        )

    def _current_signer(self) -> KeyRecord | None:
        signers = [key for key in self._keys.values() if key.can_sign]
        return max(signers, key=lambda key: key.created_at, default=None)

    def _install_new_signer(self) -> KeyRecord:
        now = self._clock()
        new = self._generate()
        if new.kid in self._keys and self._keys[new.kid].can_sign:
            # A configured HS256 secret that is already the signer: nothing to rotate.
            return self._keys[new.kid]
        self._write(new)
        self._keys[new.kid] = new
        for kid, record in list(self._keys.items()):
            if kid != new.kid and record.retired_at is None:
                retired = replace(
                    record,
                    private_key=None,
                    retired_at=now,
                    verify_until=now + self._retired_key_lifetime,
                )
                self._write(retired)
                self._keys[kid] = retired
        log.info("auth_signing_key_installed", kid=new.kid, alg=new.alg)
        return new

    def signer(self) -> KeyRecord:
        signer = self._current_signer()
        if signer is None:
            raise RuntimeError("key store not loaded")
        return signer

    def rotate(self) -> KeyRecord:
        """Make a new signer; older keys verify for ``retired_key_lifetime`` more seconds."""
        return self._install_new_signer()

    def rotate_if_older_than(self, age_seconds: float) -> bool:
        """Rotate when the signer is at least ``age_seconds`` old (0 disables)."""
        if age_seconds <= 0:
            return False
        if self._clock() - self.signer().created_at < age_seconds:
            return False
        self.rotate()
        return True

    def prune(self) -> None:
        """Forget (and delete) retired keys past their ``verify_until``."""
        now = self._clock()
        for kid, record in list(self._keys.items()):
            if record.verify_until is not None and record.verify_until <= now:
                del self._keys[kid]
                (self._directory / f"{kid}.json").unlink(missing_ok=True)
                log.info("auth_signing_key_expired", kid=kid)

    def verification_key(self, kid: str) -> VerificationKey | None:
        record = self._keys.get(kid)
        if record is None:
            return None
        if record.verify_until is not None and record.verify_until <= self._clock():
            return None
        return record.verification_key()

    def kids(self) -> list[str]:
        return list(self._keys)

    def jwks(self) -> JsonWebKeySet:
        """Public keys that still verify, newest first; symmetric keys are never published."""
        now = self._clock()
        live = [
            record
            for record in self._keys.values()
            if record.public_key is not None
            and (record.verify_until is None or record.verify_until > now)
        ]
        # The signer first, then retired keys, newest first.
        live.sort(key=lambda record: (record.retired_at is None, record.created_at), reverse=True)
        keys = [
            public_jwk(record.kid, record.alg, record.public_key)
            for record in live
            if record.public_key is not None
        ]
        return JsonWebKeySet(keys=tuple(keys))


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError("not a number")
