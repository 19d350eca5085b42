"""Usage accounting: per-user totals and per-user-per-configuration totals.

Counts live in process memory (they are operational statistics; the durable record of
what a run did belongs to the data layer). Reads are always for one user: the manager
asks only for its own user's counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatch.llm.api import ConfigUsage, TokenUsage, UsageTotals

__all__ = ["UsageLedger"]


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, *, cache_hit: bool | None, usage: TokenUsage | None, failed: bool) -> None:
        self.requests += 1
        if cache_hit is True:
            self.cache_hits += 1
        elif cache_hit is False:
            self.cache_misses += 1
        if failed:
            self.failures += 1
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens

    def freeze(self) -> UsageTotals:
        return UsageTotals(
            requests=self.requests,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            failures=self.failures,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


class UsageLedger:
    """Counters per user and per (user, configuration)."""

    def __init__(self) -> None:
        self._users: dict[str, _Counters] = {}
        self._configs: dict[str, dict[str, _Counters]] = {}

    def record(
        self,
        user_id: str,
        config: str,
        *,
        cache_hit: bool | None,
        usage: TokenUsage | None = None,
        failed: bool = False,
    ) -> None:
        """One call: ``cache_hit`` is ``None`` when the cache was not consulted; ``usage``
        is what a provider reported (``None`` for cache hits and failures)."""
        for counters in (
            self._users.setdefault(user_id, _Counters()),
            self._configs.setdefault(user_id, {}).setdefault(config, _Counters()),
        ):
            counters.add(cache_hit=cache_hit, usage=usage, failed=failed)

    def totals(self, user_id: str) -> UsageTotals:
        counters = self._users.get(user_id)
        return UsageTotals() if counters is None else counters.freeze()

    def per_config(self, user_id: str) -> tuple[ConfigUsage, ...]:
        configs = self._configs.get(user_id, {})
        return tuple(
            ConfigUsage(config=name, totals=counters.freeze())
            for name, counters in sorted(configs.items())
        )
