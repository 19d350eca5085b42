"""Retry timing and provider cooldown (a circuit breaker per provider).

:class:`RetryPolicy` decides how long to wait before another attempt at the same
provider: a server's ``Retry-After`` is honoured exactly when it is at most
``max_retry_after_seconds`` (a longer demand is not waited out inside a call: the provider
cools down for that long and the next provider is tried); otherwise exponential backoff
with jitter, ``d = min(max_delay, base_delay * 2**(attempt-1))``, waiting a uniformly random
time in ``[d/2, d]`` so that many clients do not retry in lockstep.

:class:`ProviderCircuits` keeps one circuit per provider, shared by every user's manager
(provider health is not user data). ``failure_threshold`` consecutive failed attempts open
the circuit: the provider is skipped for ``cooldown_seconds``. Then it is *half-open*: one
call probes it; success closes the circuit, failure reopens it for another cooldown.
Time comes from an injectable :class:`~dispatch.llm.clock.Clock`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dispatch.llm.api import ProviderState, ProviderStatus
from dispatch.llm.clock import Clock, SystemClock
from dispatch.llm.providers.base import ProviderCallError, ProviderThrottledError

__all__ = ["CooldownPolicy", "ProviderCircuits", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_seconds < 0 or self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("retry delays must satisfy 0 <= base <= max")
        if self.max_retry_after_seconds < 0:
            raise ValueError("max_retry_after_seconds must not be negative")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The jittered wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2.0 ** (attempt - 1))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)

    def delay_before_retry(
        self, error: ProviderCallError, attempt: int, rng: random.Random
    ) -> float | None:
        """How long to wait before attempt ``attempt + 1``, or ``None``: do not retry."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if isinstance(error, ProviderThrottledError) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after_seconds:
                return None
            return error.retry_after
        return self.backoff(attempt, rng)


@dataclass(frozen=True, slots=True)
class CooldownPolicy:
    failure_threshold: int = 5
    cooldown_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cooldown_seconds < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_seconds >= 0")


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float | None = None
    probing: bool = False


class ProviderCircuits:
    """Circuit state of every provider; see the module docstring."""

    def __init__(self, policy: CooldownPolicy | None = None, clock: Clock | None = None) -> None:
        self._policy = policy or CooldownPolicy()
        self._clock: Clock = clock or SystemClock()
        self._circuits: dict[str, _Circuit] = {}

    def _circuit(self, name: str) -> _Circuit:
        return self._circuits.setdefault(name, _Circuit())

    def state(self, name: str) -> ProviderState:
        circuit = self._circuit(name)
        if circuit.open_until is None:
            return ProviderState.CLOSED
        if self._clock.monotonic() < circuit.open_until:
            return ProviderState.OPEN
        return ProviderState.HALF_OPEN

    def usable(self, name: str) -> bool:
        """Whether a call could use the provider now (no state change)."""
        state = self.state(name)
        return state is ProviderState.CLOSED or (
            state is ProviderState.HALF_OPEN and not self._circuit(name).probing
        )

    def acquire(self, name: str) -> bool:
        """Claim the provider for one call. In the half-open state only one call at a time
        gets it (the probe); it must end with :meth:`success`, :meth:`failure` or
        :meth:`release`."""
        if not self.usable(name):
            return False
        if self.state(name) is ProviderState.HALF_OPEN:
            self._circuit(name).probing = True
        return True

    def release(self, name: str) -> None:
        """The call ended without a verdict on the provider (invalid request, cancelled)."""
        self._circuit(name).probing = False

    def success(self, name: str) -> None:
        circuit = self._circuit(name)
        circuit.failures = 0
        circuit.open_until = None
        circuit.probing = False

    def failure(self, name: str, *, open_for: float | None = None) -> bool:
        """Count a failed attempt; return whether the circuit is now open. ``open_for``
        opens it at once for that many seconds (a long ``Retry-After``)."""
        circuit = self._circuit(name)
        was_probe = circuit.probing
        circuit.probing = False
        circuit.failures += 1
        cooldown: float | None = None
        if open_for is not None:
            cooldown = max(open_for, self._policy.cooldown_seconds)
        elif was_probe or circuit.failures >= self._policy.failure_threshold:
            cooldown = self._policy.cooldown_seconds
        if cooldown is None:
            return False
        circuit.open_until = self._clock.monotonic() + cooldown
        return True

    def cooldown_remaining(self, name: str) -> float:
        circuit = self._circuit(name)
        if circuit.open_until is None:
            return 0.0
        return max(0.0, circuit.open_until - self._clock.monotonic())

    def status(self, name: str) -> ProviderStatus:
        return ProviderStatus(
            name=name,
            state=self.state(name),
            consecutive_failures=self._circuit(name).failures,
            cooldown_remaining_seconds=self.cooldown_remaining(name),
        )
