"""Walking a configuration's provider chain for one call: retries, fallback, cooldown.

For each provider in the chain, in order:

* a provider whose circuit is open (cooling down) is skipped;
* each attempt is bounded by the configuration's timeout (a hung attempt is a transient
  failure);
* a failed attempt is counted against the provider's circuit and, when the
  :class:`~dispatch.llm.resilience.RetryPolicy` allows, retried after its delay (the
  sleep function is injectable); otherwise the next provider is tried;
* a request the provider rejects as invalid ends the call at once with
  :class:`~dispatch.llm.api.InvalidLLMRequestError` (another provider would reject it too).

When the chain is exhausted the caller gets :class:`~dispatch.llm.api.ProviderRateLimitedError`
if every provider tried was throttling, else :class:`~dispatch.llm.api.ProviderUnavailableError`
naming each provider's failure. A stream may fall back only until its first chunk was
delivered; a failure after that ends it with :class:`~dispatch.llm.api.StreamInterruptedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from dispatch.llm.api import (
    InvalidLLMRequestError,
    LLMError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    StreamChunk,
    StreamInterruptedError,
)
from dispatch.llm.clock import Sleep
from dispatch.llm.providers.base import (
    Provider,
    ProviderCall,
    ProviderCallError,
    ProviderRejectedRequestError,
    ProviderResult,
    ProviderThrottledError,
    ProviderTransientError,
)
from dispatch.llm.resilience import ProviderCircuits, RetryPolicy

__all__ = ["ChainRun"]


class ChainRun:
    """One call's walk over ``providers`` (already resolved from the configuration)."""

    def __init__(
        self,
        *,
        config_name: str,
        providers: Sequence[Provider],
        circuits: ProviderCircuits,
        retry: RetryPolicy,
        sleep: Sleep,
        rng: random.Random,
        log: Any,
    ) -> None:
        self._config_name = config_name
        self._providers = providers
        self._circuits = circuits
        self._retry = retry
        self._sleep = sleep
        self._rng = rng
        self._log = log
        self._failures: list[ProviderCallError] = []
        self._skipped: list[str] = []

    # -- shared decisions ----------------------------------------------------------------

    async def _after_failure(
        self, provider: Provider, error: ProviderCallError, attempt: int
    ) -> bool:
        """Record a failed attempt; sleep and return True when it should be retried."""
        delay = self._retry.delay_before_retry(error, attempt, self._rng)
        open_for: float | None = None
        if delay is None and isinstance(error, ProviderThrottledError):
            open_for = error.retry_after
        opened = self._circuits.failure(provider.name, open_for=open_for)
        self._log.warning(
            "llm.provider.attempt_failed",
            provider=provider.name,
            attempt=attempt,
            error_code=error.error_code,
            status_code=error.status_code,
            retry_in_seconds=None if opened else delay,
            cooling_down=opened,
        )
        if delay is None or opened:
            self._failures.append(error)
            return False
        await self._sleep(delay)
        return True

    def _rejected(self, error: ProviderRejectedRequestError) -> InvalidLLMRequestError:
        self._log.info(
            "llm.provider.rejected_request", provider=error.provider, status_code=error.status_code
        )
        return InvalidLLMRequestError(error.message)

    def _interrupted(self, error: ProviderCallError) -> StreamInterruptedError:
        self._circuits.failure(error.provider)
        self._log.warning(
            "llm.provider.stream_interrupted", provider=error.provider, error_code=error.error_code
        )
        return StreamInterruptedError(
            f"{error.provider} failed in the middle of a stream: {error.message}"
        )

    def exhausted(self) -> LLMError:
        """The error for a chain that produced no answer."""
        if (
            self._failures
            and not self._skipped
            and all(isinstance(error, ProviderThrottledError) for error in self._failures)
        ):
            waits = [
                error.retry_after
                for error in self._failures
                if isinstance(error, ProviderThrottledError) and error.retry_after is not None
            ]
            retry_after = min(waits) if waits else None
            return ProviderRateLimitedError(
                f"every provider of configuration '{self._config_name}' is rate limiting "
                "requests" + (f"; retry in {retry_after:g} s" if retry_after is not None else ""),
                retry_after=retry_after,
            )
        reasons = [f"{error.provider}: {error.message}" for error in self._failures]
        reasons += [
            f"{name}: cooling down for {self._circuits.cooldown_remaining(name):.1f} s"
            for name in self._skipped
        ]
        return ProviderUnavailableError(
            f"no provider of configuration '{self._config_name}' could answer ("
            + "; ".join(reasons)
            + ")"
        )

    # -- one-shot completions ------------------------------------------------------------

    async def complete(
        self, call_for: Callable[[Provider], ProviderCall]
    ) -> tuple[Provider, ProviderResult]:
        for provider in self._providers:
            if not self._circuits.acquire(provider.name):
                self._skipped.append(provider.name)
                continue
            call = call_for(provider)
            verdict = False
            try:
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        async with asyncio.timeout(call.timeout_seconds):
                            result = await provider.complete(call)
                    except TimeoutError:
                        error: ProviderCallError = ProviderTransientError(
                            f"{provider.name} timed out after {call.timeout_seconds:g} s",
                            provider=provider.name,
                        )
                    except ProviderRejectedRequestError as exc:
                        raise self._rejected(exc) from None
                    except ProviderCallError as exc:
                        error = exc
                    else:
                        self._circuits.success(provider.name)
                        verdict = True
                        return provider, result
                    verdict = True
                    if not await self._after_failure(provider, error, attempt):
                        break
                    if not self._circuits.acquire(provider.name):
                        break
                    verdict = False
            finally:
                if not verdict:
                    self._circuits.release(provider.name)
        raise self.exhausted()

    # -- streams ---------------------------------------------------------------------------

    async def stream(
        self, call_for: Callable[[Provider], ProviderCall]
    ) -> AsyncGenerator[tuple[Provider, StreamChunk | ProviderResult], None]:
        """Items of the first provider that starts answering; the last is its result."""
        for provider in self._providers:
            if not self._circuits.acquire(provider.name):
                self._skipped.append(provider.name)
                continue
            call = call_for(provider)
            verdict = False
            try:
                attempt = 0
                while True:
                    attempt += 1
                    emitted = False
                    try:
                        async with contextlib.aclosing(provider.stream(call)) as items:
                            async for item in items:
                                if isinstance(item, ProviderResult):
                                    self._circuits.success(provider.name)
                                    verdict = True
                                    yield provider, item
                                    return
                                emitted = True
                                yield provider, item
                        raise ProviderTransientError(
                            f"{provider.name} ended a stream without a result",
                            provider=provider.name,
                        )
                    except ProviderCallError as exc:
                        if emitted:
                            verdict = True
                            raise self._interrupted(exc) from None
                        if isinstance(exc, ProviderRejectedRequestError):
                            raise self._rejected(exc) from None
                        verdict = True
                        if not await self._after_failure(provider, exc, attempt):
                            break
                        if not self._circuits.acquire(provider.name):
                            break
                        verdict = False
            finally:
                if not verdict:
                    self._circuits.release(provider.name)
        raise self.exhausted()
