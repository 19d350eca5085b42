"""Tool permissions across users and plans: each user's token decides that user's tools.

Plans and roles are set on the accounts by the auth service and travel in each user's
access token; the engine decides from the verified caller, in process and over gRPC (where
the served ToolService reads the plan from the token, never from the request). The
deployment has the built-in tools plus one tool per remaining permission group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from auth.api import Plan
from dispatch.engine.api import (
    MissingToolGroupError,
    PermissionGroup,
    ToolStatus,
    UnknownToolGroupError,
)
from dispatch.engine.permissions import check_tool_permission
from dispatch.engine.registry import Tool
from itests.agent_tools.outside_llm import OutsideModel, last_user_message
from itests.agent_tools.plan_tools import (
    ANALYTICS_TOOL,
    DATA_TOOL,
    DEVELOPER_TOOL,
    GROUP_OF,
    OPTIMIZATION_TOOL,
    groupless_tool,
    plan_tools,
    unknown_group_tool,
)
from itests.agent_tools.platform import (
    Member,
    assert_complete_run,
    assert_mentions_none,
    composition,
    deployment,
)
from server.composition import build_platform
from server.testing import FAST_AUTH, settings_for_tests

THEME = "tool permissions across users and plans"
__all__ = ["composition"]  # the fixture, imported for pytest


def tools_in(*groups: PermissionGroup) -> set[str]:
    return {name for name, group in GROUP_OF.items() if group in groups}


BASIC = tools_in(PermissionGroup.BASIC)
PRO = BASIC | tools_in(PermissionGroup.ANALYTICS, PermissionGroup.DATA_MANAGEMENT)


async def listed(member: Member) -> set[str]:
    return {tool.name for tool in await member.engine.list_tools(member.caller)}


def idents(members: Iterable[Member]) -> list[str]:
    return [ident for member in members for ident in member.identifiers()]


async def test_free_and_pro_users_see_different_tool_sets_in_the_same_deployment(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel() as model,
        deployment(
            tmp_path, composition, extra_tools=plan_tools(), llm_factory=model.llm_factory()
        ) as dep,
    ):
        free_users, pro_users = await asyncio.gather(
            dep.members("free", 3), dep.members("pro", 3, plan=Plan.PRO)
        )
        members = [*free_users, *pro_users]
        listings = await asyncio.gather(*(listed(member) for member in members))
        for member, names in zip(members, listings, strict=True):
            assert names == (PRO if member in pro_users else BASIC)

        # What each user's run offers the model is exactly that user's tool set.
        runs = await asyncio.gather(
            *(dep.run(member, "assistant", f"which tools, {member.user_id}?") for member in members)
        )
        offered = {
            last_user_message(request): {
                spec["function"]["name"] for spec in request.json().get("tools", [])
            }
            for request in model.requests
        }
        for member, record in zip(members, runs, strict=True):
            assert_complete_run(record)
            expected = PRO if member in pro_users else BASIC
            seen = offered[f"which tools, {member.user_id}?"]
            assert seen == {name.replace(".", "_") for name in expected}

        # Calling a pro tool: denied with the upgrade path for free users, served for pro
        # users, each on their own notes.
        async def count(member: Member, notes: int) -> tuple[ToolStatus, object, tuple[Plan, ...]]:
            for n in range(notes):
                await member.engine.execute_tool(
                    member.caller, "notes.add", {"content": f"{member.user_id} {n}"}
                )
            result = await member.engine.execute_tool(member.caller, ANALYTICS_TOOL, {})
            assert_mentions_none(
                result.model_dump(mode="json"), idents(m for m in members if m is not member)
            )
            return result.status, result.result, result.upgrade_plans

        counted = await asyncio.gather(
            *(count(member, index + 1) for index, member in enumerate(members))
        )
        for index, (member, (status, value, upgrades)) in enumerate(
            zip(members, counted, strict=True)
        ):
            if member in pro_users:
                assert status is ToolStatus.SUCCESS
                assert value == {"notes": index + 1}
            else:
                assert status is ToolStatus.PERMISSION_DENIED
                assert value is None
                assert upgrades == (Plan.PRO, Plan.ENTERPRISE)
        await dep.assert_idle()


async def test_system_tools_need_enterprise_plus_admin_per_user(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        enterprise_admin, enterprise, pro_admin, free_admin, developer = await asyncio.gather(
            dep.member("ent-admin", plan=Plan.ENTERPRISE, roles=("admin",)),
            dep.member("ent", plan=Plan.ENTERPRISE),
            dep.member("pro-admin", plan=Plan.PRO, roles=("admin",)),
            dep.member("free-admin", roles=("admin",)),
            dep.member("dev", plan=Plan.DEVELOPER),
        )
        members = [enterprise_admin, enterprise, pro_admin, free_admin, developer]
        results = await asyncio.gather(
            *(member.engine.execute_tool(member.caller, "system.stats", {}) for member in members)
        )
        listings = await asyncio.gather(*(listed(member) for member in members))
        allowed = {enterprise_admin.user_id, developer.user_id}
        for member, result, names in zip(members, results, listings, strict=True):
            if member.user_id in allowed:
                assert result.status is ToolStatus.SUCCESS
                assert "system.stats" in names
                stats = result.result
                assert isinstance(stats, dict)
                assert stats["tools_registered"] == len(GROUP_OF)
                # Engine-wide totals only: nothing of any user.
                assert_mentions_none(stats, idents(members))
            else:
                assert result.status is ToolStatus.PERMISSION_DENIED
                assert "system.stats" not in names
                assert_mentions_none(result.model_dump(mode="json"), idents(members))
        # Each denial says what that user lacks: the role, or the plan.
        assert results[1].upgrade_plans == ()
        assert "'admin' role" in str(results[1].error_message)
        assert results[2].upgrade_plans == (Plan.ENTERPRISE,)
        assert results[3].upgrade_plans == (Plan.ENTERPRISE,)
        assert tools_in(PermissionGroup.SYSTEM_MANAGEMENT) <= listings[0]
        assert OPTIMIZATION_TOOL in listings[0]
        assert OPTIMIZATION_TOOL in listings[1]
        assert OPTIMIZATION_TOOL not in listings[2]
        await dep.assert_idle()


async def test_developer_tools_are_available_to_developers_only(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        developer, free_developer, enterprise_admin, pro = await asyncio.gather(
            dep.member("dev", plan=Plan.DEVELOPER),
            dep.member("free-dev", roles=("developer",)),
            dep.member("ent-admin", plan=Plan.ENTERPRISE, roles=("admin",)),
            dep.member("pro", plan=Plan.PRO),
        )
        members = [developer, free_developer, enterprise_admin, pro]
        developers = {developer.user_id, free_developer.user_id}
        results = await asyncio.gather(
            *(
                member.engine.execute_tool(member.caller, DEVELOPER_TOOL, {"text": member.user_id})
                for member in members
            )
        )
        listings = await asyncio.gather(*(listed(member) for member in members))
        for member, result, names in zip(members, results, listings, strict=True):
            assert member.caller.is_developer is (member.user_id in developers)
            if member.user_id in developers:
                assert result.status is ToolStatus.SUCCESS
                assert result.result == {"echo": member.user_id}
                assert DEVELOPER_TOOL in names
            else:
                assert result.status is ToolStatus.PERMISSION_DENIED
                assert result.upgrade_plans == (Plan.DEVELOPER,)
                assert "developers only" in str(result.error_message)
                assert DEVELOPER_TOOL not in names
            assert_mentions_none(
                result.model_dump(mode="json"), idents(m for m in members if m is not member)
            )
        # The developer plan has every group; the developer role adds only its own group.
        assert listings[0] == set(GROUP_OF)
        assert listings[1] == BASIC | {DEVELOPER_TOOL}
        await dep.assert_idle()


async def test_a_tool_without_a_group_is_refused_for_every_user_and_plan(
    tmp_path: Path, composition: str
) -> None:
    # A deployment that offers such a tool does not start (fail closed, before serving).
    refusals: list[tuple[Tool[Any], type[Exception]]] = [
        (groupless_tool(), MissingToolGroupError),
        (unknown_group_tool(), UnknownToolGroupError),
    ]
    for number, (tool, error) in enumerate(refusals):
        with pytest.raises(error):
            await build_platform(
                settings_for_tests(tmp_path / f"refused-{number}"),
                auth_overrides=FAST_AUTH,
                extra_tools=[*plan_tools(), tool],
            )
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        members = await asyncio.gather(
            dep.member("free"),
            dep.member("pro", plan=Plan.PRO),
            dep.member("ent-admin", plan=Plan.ENTERPRISE, roles=("admin",)),
            dep.member("dev", plan=Plan.DEVELOPER),
            dep.member("free-dev", roles=("developer", "admin")),
        )

        async def probe(member: Member) -> tuple[ToolStatus, ToolStatus, set[str]]:
            for tool, _ in refusals:
                decision = check_tool_permission(member.caller, tool.definition)
                assert not decision.allowed
                assert "such tools are refused" in decision.reason
            missing = await member.engine.execute_tool(
                member.caller, "ungrouped.echo", {"text": member.user_id}
            )
            assert missing.error_code == "TOOL_NOT_FOUND"
            served = await member.engine.execute_tool(
                member.caller, "calculator", {"expression": "2*21"}
            )
            everything = await member.engine.list_tools(member.caller, include_unavailable=True)
            return missing.status, served.status, {tool.name for tool in everything}

        probes = await asyncio.gather(*(probe(member) for member in members))
        for missing, served, names in probes:
            assert missing is ToolStatus.NOT_FOUND
            assert served is ToolStatus.SUCCESS
            assert names == set(GROUP_OF)
            assert "ungrouped.echo" not in names
            assert "mystery.echo" not in names
        await dep.assert_idle()


async def test_changing_one_users_plan_changes_only_that_users_permissions(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        upgraded, neighbour, bystander = await dep.members("user", 3)

        async def try_data_tool(member: Member) -> ToolStatus:
            result = await member.engine.execute_tool(
                member.caller, DATA_TOOL, {"text": f"import by {member.user_id}"}
            )
            return result.status

        assert (
            await asyncio.gather(
                *(try_data_tool(member) for member in (upgraded, neighbour, bystander))
            )
            == [ToolStatus.PERMISSION_DENIED] * 3
        )

        async def upgrade() -> Member:
            await dep.platform.auth.update_account(upgraded.user_id, plan=Plan.PRO)
            return await dep.join("upgraded", await dep.login(upgraded.account))

        async def keep_calling(member: Member) -> list[ToolStatus]:
            return [await try_data_tool(member) for _ in range(3)]

        fresh, neighbour_calls, bystander_calls = await asyncio.gather(
            upgrade(), keep_calling(neighbour), keep_calling(bystander)
        )
        assert neighbour_calls == bystander_calls == [ToolStatus.PERMISSION_DENIED] * 3
        # The upgraded user's new token carries the new plan...
        assert fresh.caller.plan is Plan.PRO
        assert await try_data_tool(fresh) is ToolStatus.SUCCESS
        assert {ANALYTICS_TOOL, DATA_TOOL} <= await listed(fresh)
        # ...the old token still carries the old one...
        assert await try_data_tool(upgraded) is ToolStatus.PERMISSION_DENIED
        # ...and nobody else changed, whether they log in again or not.
        neighbour_again = await dep.join("neighbour", await dep.login(neighbour.account))
        assert neighbour_again.caller.plan is Plan.FREE
        for member in (neighbour, neighbour_again, bystander):
            assert await try_data_tool(member) is ToolStatus.PERMISSION_DENIED
            assert await listed(member) == BASIC
            assert await member.notes() == []
        assert [note.content for note in await fresh.notes()] == [f"import by {fresh.user_id}"]
        # Back on the free plan, the same user's next token is refused again.
        await dep.platform.auth.update_account(upgraded.user_id, plan=Plan.FREE)
        downgraded = await dep.join("downgraded", await dep.login(upgraded.account))
        assert await try_data_tool(downgraded) is ToolStatus.PERMISSION_DENIED
        await dep.assert_idle()
