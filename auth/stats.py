"""Counters of token validations, shared by every implementation of the service Protocol."""

from __future__ import annotations

from collections import Counter

from auth.api import AuthResult, AuthStats

__all__ = ["AuthCounters"]


class AuthCounters:
    """Attempts, successes and failures, per context kind and per error code."""

    def __init__(self) -> None:
        self._attempts = 0
        self._successes = 0
        self._failures = 0
        self._by_context: Counter[str] = Counter()
        self._by_error: Counter[str] = Counter()

    def record(self, result: AuthResult) -> AuthResult:
        self._attempts += 1
        self._by_context[result.context_kind.value] += 1
        if result.success:
            self._successes += 1
        else:
            self._failures += 1
            if result.error_code is not None:
                self._by_error[result.error_code.value] += 1
        return result

    def snapshot(self, *, circuit_state: str | None = None) -> AuthStats:
        return AuthStats(
            attempts=self._attempts,
            successes=self._successes,
            failures=self._failures,
            by_context=dict(self._by_context),
            by_error_code=dict(self._by_error),
            circuit_state=circuit_state,
        )
