"""Tests of the current-context ContextVar and context_scope (sync, async, nested, tasks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

from context.current import (
    LOG_CONTEXT_KEYS,
    ContextScope,
    context_scope,
    current_context,
    get_current_context,
)
from context.errors import NoCurrentContextError
from context.execution_context import UserExecutionContext
from context.ids import new_user_id


@pytest.fixture(autouse=True)
def _clean_log_context() -> Iterator[None]:
    clear_contextvars()
    yield
    clear_contextvars()


def _ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


def _log_ids(ctx: UserExecutionContext) -> dict[str, str]:
    return {key: getattr(ctx, key) for key in LOG_CONTEXT_KEYS}


def test_no_context_outside_any_scope() -> None:
    assert get_current_context() is None
    with pytest.raises(NoCurrentContextError) as caught:
        current_context()
    assert caught.value.error_code == "NO_CONTEXT"
    assert caught.value.grpc_status_name == "FAILED_PRECONDITION"


def test_scope_binds_context_and_log_fields_then_restores_them() -> None:
    bind_contextvars(user_id="outer-log-user", unrelated="kept")
    ctx = _ctx()
    with context_scope(ctx) as bound:
        assert bound is ctx
        assert current_context() is ctx and get_current_context() is ctx
        assert get_contextvars() == {**_log_ids(ctx), "unrelated": "kept"}
    assert get_current_context() is None
    assert get_contextvars() == {"user_id": "outer-log-user", "unrelated": "kept"}


def test_nested_scopes_restore_each_level_exactly() -> None:
    outer, inner = _ctx(), _ctx()
    child = inner.create_child_context("nested")
    with context_scope(outer):
        with context_scope(inner):
            assert current_context() is inner
            with context_scope(child):
                assert current_context() is child
                assert get_contextvars() == _log_ids(child)
            assert current_context() is inner
            assert get_contextvars() == _log_ids(inner)
        assert current_context() is outer
        assert get_contextvars() == _log_ids(outer)
    assert get_current_context() is None
    assert get_contextvars() == {}


def test_scope_restores_on_exception_at_every_level() -> None:
    outer, inner = _ctx(), _ctx()
    with context_scope(outer):
        with pytest.raises(ValueError, match="inner failure"), context_scope(inner):
            raise ValueError("inner failure")
        assert current_context() is outer
        assert get_contextvars() == _log_ids(outer)
    with pytest.raises(KeyError), context_scope(outer):
        raise KeyError("outer failure")
    assert get_current_context() is None
    assert get_contextvars() == {}


async def test_async_with_binds_and_restores() -> None:
    ctx, other = _ctx(), _ctx()
    async with context_scope(ctx) as bound:
        assert bound is ctx
        await asyncio.sleep(0)
        assert current_context() is ctx
        async with context_scope(other):
            await asyncio.sleep(0)
            assert current_context() is other
            assert get_contextvars() == _log_ids(other)
        assert current_context() is ctx
        assert get_contextvars() == _log_ids(ctx)
    assert get_current_context() is None


async def test_thousand_concurrent_tasks_each_see_only_their_own_context() -> None:
    tasks = 1_000
    everyone_inside = asyncio.Event()
    inside = 0
    outer = _ctx()

    async def serve(ctx: UserExecutionContext) -> list[str]:
        nonlocal inside
        seen: list[str] = []
        assert current_context() is outer  # inherited from the creating task
        async with context_scope(ctx):
            inside += 1
            if inside == tasks:
                everyone_inside.set()
            await everyone_inside.wait()  # all 1,000 scopes are active at once from here
            for _ in range(5):
                seen.append(current_context().user_id)
                seen.append(get_contextvars()["user_id"])
                assert get_contextvars() == _log_ids(ctx)
                await asyncio.sleep(0)
            child = ctx.create_child_context("tool")
            async with context_scope(child):
                await asyncio.sleep(0)
                seen.append(current_context().user_id)
                assert current_context() is child
                assert get_contextvars()["request_id"] == child.request_id
            await asyncio.sleep(0)
            assert current_context() is ctx
            seen.append(get_contextvars()["request_id"])
        assert current_context() is outer
        return seen

    contexts = [_ctx() for _ in range(tasks)]
    async with context_scope(outer):
        results = await asyncio.gather(*(serve(ctx) for ctx in contexts))
        assert current_context() is outer
    assert everyone_inside.is_set()
    for ctx, seen in zip(contexts, results, strict=True):
        assert seen == [ctx.user_id] * 11 + [ctx.request_id]
    assert get_current_context() is None


def test_log_lines_written_in_a_scope_carry_the_context() -> None:
    ctx = _ctx()
    logger = structlog.get_logger("context.current_test")
    merge = structlog.contextvars.merge_contextvars
    with structlog.testing.capture_logs(processors=[merge]) as logs:
        with context_scope(ctx):
            logger.info("inside")
        logger.info("outside")
    inside, outside = logs
    assert {key: inside[key] for key in LOG_CONTEXT_KEYS} == _log_ids(ctx)
    assert not set(LOG_CONTEXT_KEYS).intersection(outside)


def test_threads_do_not_share_the_current_context() -> None:
    ctx = _ctx()
    seen: list[UserExecutionContext | None] = []
    entered, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        entered.wait()
        seen.append(get_current_context())
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with context_scope(ctx):
        entered.set()
        release.wait()
    thread.join()
    assert seen == [None]


def test_a_scope_object_is_entered_once_at_a_time() -> None:
    scope = context_scope(_ctx())
    assert isinstance(scope, ContextScope)
    with scope, pytest.raises(RuntimeError, match="already active"), scope:
        pass
    with pytest.raises(RuntimeError, match="not active"):
        scope.__exit__(None, None, None)
    with scope:  # reusable once exited
        assert current_context() is scope.context
    with pytest.raises(TypeError, match="UserExecutionContext"):
        context_scope({"user_id": "usr_x"})  # type: ignore[arg-type]  # hostile on purpose
