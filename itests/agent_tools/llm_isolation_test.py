"""LLM manager isolation: cache, budget, usage, streams and failover are per user.

The real :class:`~dispatch.llm.manager.LLMManagerFactory` of the platform serves every
scenario, in process (a manager built for the user's context) and over gRPC (the served
LLMService, reached with the user's own token and context). Cache, budget and usage run
on the offline ``local`` provider; streaming and failover are provider behaviour, so they
go over HTTP to loopback chat-completions servers through the real ``openai`` provider.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dispatch.llm.api import (
    ChatMessage,
    Completion,
    CompletionRequest,
    TokenBudgetExceededError,
)
from dispatch.llm.manager import ContextLLMManager
from dispatch.llm.settings import LLMSettings
from dispatch.llm.stub_server import RecordedRequest, StubResponse
from itests.agent_tools.outside_llm import HANG, OutsideModel, last_user_message, stub_llm_factory
from itests.agent_tools.platform import Member, assert_mentions_none, composition, deployment

THEME = "LLM manager isolation"
__all__ = ["composition"]  # the fixture, imported for pytest


def ask(text: str, *, use_cache: bool = True, config: str = "default") -> CompletionRequest:
    return CompletionRequest(
        messages=(ChatMessage.user(text),), use_cache=use_cache, config=config, max_tokens=64
    )


def others_of(member: Member, members: list[Member]) -> list[str]:
    return [ident for other in members if other is not member for ident in other.identifiers()]


async def test_identical_prompts_of_two_users_never_share_a_cached_completion(
    tmp_path: Path, composition: str
) -> None:
    prompt = ask("what is the capital of France?")
    async with deployment(tmp_path, composition) as dep:
        members = await dep.members("asker", 4)
        first = await asyncio.gather(*(member.complete(prompt) for member in members))
        again = await asyncio.gather(*(member.complete(prompt) for member in members))
        # Everyone asked the same thing at the same time: each got an answer of their own,
        # and only their own repeat came from their cache.
        assert [completion.cached for completion in first] == [False] * len(members)
        assert [completion.cached for completion in again] == [True] * len(members)
        for one, two in zip(first, again, strict=True):
            assert one.content == two.content
            assert one.usage.total_tokens > 0
        # A user who comes later still finds nothing in the cache for them.
        late = await dep.member("late")
        assert (await late.complete(prompt)).cached is False
        assert (await late.complete(prompt)).cached is True
        for member, completion in zip(members, first, strict=True):
            report = await member.usage()
            assert report.user_id == member.user_id
            assert report.totals.requests == 2
            assert report.totals.cache_misses == 1
            assert report.totals.cache_hits == 1
            assert report.totals.total_tokens == completion.usage.total_tokens
            assert_mentions_none(report.model_dump(mode="json"), others_of(member, members))
            if isinstance(member.llm, ContextLLMManager):
                assert await member.llm.cached_entries() == 1
        if not dep.grpc:
            # Forgetting one user's cache leaves everyone else's entries alone.
            cleared = members[0].llm
            assert isinstance(cleared, ContextLLMManager)
            assert await cleared.clear_cache() == 1
            assert (await members[0].complete(prompt)).cached is False
            assert (await members[1].complete(prompt)).cached is True
        await dep.assert_idle()


async def test_one_user_exhausting_the_token_budget_leaves_the_other_user_served(
    tmp_path: Path, composition: str
) -> None:
    budget = 600
    settings = LLMSettings(providers=("local",), daily_token_budget=budget)
    async with deployment(tmp_path, composition, llm_settings=settings) as dep:
        spender, *savers = await dep.members("user", 4)

        async def spend() -> tuple[int, TokenBudgetExceededError]:
            for calls in range(1, 200):
                try:
                    await spender.complete(ask(f"spend tokens, call {calls}", use_cache=False))
                except TokenBudgetExceededError as exc:
                    return calls, exc
            raise AssertionError("the budget never ran out")

        async def save(member: Member) -> list[Completion]:
            return [await member.complete(ask(f"just once {n}", use_cache=False)) for n in range(2)]

        (calls, refusal), saved = await asyncio.gather(
            spend(), asyncio.gather(*(save(member) for member in savers))
        )
        assert calls > 1
        assert refusal.resets_at is not None
        assert_mentions_none(refusal.message, [ident for m in savers for ident in m.identifiers()])
        spent = await spender.usage()
        assert spent.budget.limit == budget
        # Refused because what is left cannot cover one more answer (64 tokens) and its
        # short prompt; nothing was charged beyond the limit.
        assert spent.budget.used <= budget
        assert spent.budget.remaining < 64 + 32
        assert spent.totals.failures == 1
        # The others are served, before and after the spender ran dry, from their own budget.
        after = await asyncio.gather(
            *(member.complete(ask("still there?", use_cache=False)) for member in savers)
        )
        for member, completions, completion in zip(savers, saved, after, strict=True):
            used = sum(c.usage.total_tokens for c in (*completions, completion))
            report = await member.usage()
            assert report.user_id == member.user_id
            assert report.budget.used == used
            assert report.budget.remaining == budget - used
            assert report.totals.failures == 0
        with pytest.raises(TokenBudgetExceededError):
            await spender.complete(ask("one more?", use_cache=False))
        await dep.assert_idle()


async def test_usage_accounting_is_per_user(tmp_path: Path, composition: str) -> None:
    async with deployment(tmp_path, composition) as dep:
        members = await dep.members("user", 4)

        async def use(index: int, member: Member) -> list[Completion]:
            done = []
            for n in range(index + 1):
                config = "triage" if n % 2 else "default"
                done.append(
                    await member.complete(ask(f"question {n} of {member.user_id}", config=config))
                )
            return done

        completions = await asyncio.gather(
            *(use(index, member) for index, member in enumerate(members))
        )
        reports = await asyncio.gather(*(member.usage() for member in members))
        for index, (member, done, report) in enumerate(
            zip(members, completions, reports, strict=True)
        ):
            assert report.user_id == member.user_id
            assert report.totals.requests == index + 1
            assert report.totals.cache_misses == index + 1
            assert report.totals.prompt_tokens == sum(c.usage.prompt_tokens for c in done)
            assert report.totals.completion_tokens == sum(c.usage.completion_tokens for c in done)
            assert report.budget.used == sum(c.usage.total_tokens for c in done)
            per_config = {entry.config: entry.totals.requests for entry in report.per_config}
            expected = {"default": (index + 2) // 2}
            if index >= 1:
                expected["triage"] = (index + 1) // 2
            assert per_config == expected
            assert_mentions_none(report.model_dump(mode="json"), others_of(member, members))
        totals = [report.totals.requests for report in reports]
        assert totals == [1, 2, 3, 4]
        await dep.assert_idle()


def _streamed(request: RecordedRequest) -> StubResponse:
    """A streamed answer made of the words after ``tell`` in the user's message."""
    words = last_user_message(request).split("tell", 1)[1].split()
    return StubResponse.stream([f"{word} " for word in words], usage=(12, len(words)))


async def test_streamed_completions_of_concurrent_users_stay_separate(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel(_streamed) as model,
        deployment(tmp_path, composition, llm_factory=stub_llm_factory([model.provider()])) as dep,
    ):
        members = await dep.members("listener", 5)
        words = {member.user_id: [f"{member.user_id}-{n}" for n in range(6)] for member in members}

        async def listen(member: Member) -> list[str]:
            request = ask(f"{HANG} tell {' '.join(words[member.user_id])}", use_cache=False)
            chunks = await member.stream(request)
            final = chunks[-1].completion
            assert final is not None
            assert [chunk.completion for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
            assert final.provider == "outside"
            assert final.content == "".join(chunk.delta for chunk in chunks)
            return [chunk.delta for chunk in chunks if chunk.delta]

        listening = [asyncio.ensure_future(listen(member)) for member in members]
        # Every stream is requested before any is answered: they run side by side.
        await model.wait_held(len(members))
        model.release()
        heard = await asyncio.gather(*listening)
        for member, pieces in zip(members, heard, strict=True):
            assert "".join(pieces).split() == words[member.user_id]
            assert_mentions_none(pieces, others_of(member, members))
            report = await member.usage()
            assert report.totals.requests == 1
            assert report.totals.completion_tokens == len(words[member.user_id])
        await dep.assert_idle()


def _primary(request: RecordedRequest) -> StubResponse:
    message = last_user_message(request)
    if "outage" in message:
        return StubResponse.error(503, "overloaded")
    return StubResponse.completion(f"primary answers: {message}")


def _backup(request: RecordedRequest) -> StubResponse:
    return StubResponse.completion(f"backup answers: {last_user_message(request)}")


async def test_provider_failover_for_one_users_call_does_not_mix_responses(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel(_primary) as primary,
        OutsideModel(_backup, trigger=None) as backup,
        deployment(
            tmp_path,
            composition,
            llm_factory=stub_llm_factory([primary.provider("primary"), backup.provider("backup")]),
        ) as dep,
    ):
        unlucky = await dep.members("unlucky", 3)
        lucky = await dep.members("lucky", 3)
        members = [*unlucky, *lucky]

        def message_of(member: Member) -> str:
            trouble = "outage" if member in unlucky else "fine"
            return f"{HANG} {trouble} question of {member.user_id}"

        asking = [
            asyncio.ensure_future(member.complete(ask(message_of(member), use_cache=False)))
            for member in members
        ]
        await primary.wait_held(len(members))
        primary.release()
        answers = await asyncio.gather(*asking)
        for member, answer in zip(members, answers, strict=True):
            expected = "backup" if member in unlucky else "primary"
            assert answer.provider == expected
            assert answer.content == f"{expected} answers: {message_of(member)}"
            assert_mentions_none(answer.content, others_of(member, members))
        # Only the failed-over calls reached the backup, each with its own user's prompt.
        assert sorted(last_user_message(request) for request in backup.requests) == sorted(
            message_of(member) for member in unlucky
        )
        # Their failures did not take the primary away from anyone else.
        follow_up = await lucky[0].complete(ask("fine again", use_cache=False))
        assert follow_up.provider == "primary"
        assert follow_up.content == "primary answers: fine again"
        await dep.assert_idle()
