"""Each permission rule on its own: plans, the admin role, developers, fail-closed groups."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from auth.api import AuthResult, Plan, TokenType
from context.api import UserExecutionContext, new_user_id
from dispatch.engine.api import (
    CallerMismatchError,
    InvalidCallerError,
    PermissionGroup,
    ToolCaller,
    ToolDefinition,
)
from dispatch.engine.permissions import (
    ADMIN_ROLE,
    PermissionDecision,
    allowed_groups,
    check_tool_permission,
)
from dispatch.engine.testing import make_caller

_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": False}


def _tool(group: str | None, name: str = "some.tool") -> ToolDefinition:
    return ToolDefinition(
        name=name,
        title="Some tool",
        description="Does something.",
        input_schema=_SCHEMA,
        group=group,
    )


def _check(plan: Plan, group: str | None, **caller: object) -> PermissionDecision:
    roles = caller.get("roles", ())
    assert isinstance(roles, tuple)
    is_developer = bool(caller.get("is_developer", False))
    return check_tool_permission(
        make_caller(plan, roles=roles, is_developer=is_developer), _tool(group)
    )


@pytest.mark.parametrize("plan", list(Plan))
def test_basic_group_is_allowed_on_every_plan(plan: Plan) -> None:
    assert _check(plan, "basic").allowed


@pytest.mark.parametrize("group", ["analytics", "data_management"])
def test_free_plan_is_denied_pro_groups_with_upgrade_path(group: str) -> None:
    decision = _check(Plan.FREE, group)
    assert not decision.allowed
    assert decision.upgrade_plans == (Plan.PRO, Plan.ENTERPRISE)
    assert "free plan" in decision.reason
    assert "upgrade to pro or enterprise" in decision.reason


@pytest.mark.parametrize("group", ["analytics", "data_management"])
@pytest.mark.parametrize("plan", [Plan.PRO, Plan.ENTERPRISE])
def test_pro_groups_are_allowed_from_pro_up(plan: Plan, group: str) -> None:
    assert _check(plan, group).allowed


def test_pro_plan_is_denied_advanced_optimization_with_upgrade_to_enterprise() -> None:
    decision = _check(Plan.PRO, "advanced_optimization")
    assert not decision.allowed
    assert decision.upgrade_plans == (Plan.ENTERPRISE,)
    assert "upgrade to enterprise" in decision.reason


def test_enterprise_plan_is_allowed_advanced_optimization() -> None:
    assert _check(Plan.ENTERPRISE, "advanced_optimization").allowed


def test_system_management_on_enterprise_without_admin_role_is_denied() -> None:
    decision = _check(Plan.ENTERPRISE, "system_management", roles=("support",))
    assert not decision.allowed
    assert decision.required_role == ADMIN_ROLE
    assert decision.upgrade_plans == ()  # no plan change helps: the role is missing
    assert "'admin' role" in decision.reason


def test_system_management_on_enterprise_with_admin_role_is_allowed() -> None:
    assert _check(Plan.ENTERPRISE, "system_management", roles=(ADMIN_ROLE,)).allowed


def test_admin_role_on_pro_plan_is_not_enough_for_system_management() -> None:
    decision = _check(Plan.PRO, "system_management", roles=(ADMIN_ROLE,))
    assert not decision.allowed
    assert decision.upgrade_plans == (Plan.ENTERPRISE,)
    assert decision.required_role is None


def test_free_plan_without_role_is_told_both_plan_and_role_for_system_management() -> None:
    decision = _check(Plan.FREE, "system_management")
    assert not decision.allowed
    assert decision.upgrade_plans == (Plan.ENTERPRISE,)
    assert decision.required_role == ADMIN_ROLE
    assert "obtain the 'admin' role" in decision.reason


def test_developer_tools_are_denied_to_non_developers_even_on_enterprise() -> None:
    decision = _check(Plan.ENTERPRISE, "developer_tools", roles=(ADMIN_ROLE,))
    assert not decision.allowed
    assert decision.upgrade_plans == (Plan.DEVELOPER,)
    assert "developers only" in decision.reason


def test_developer_status_grants_developer_tools_on_any_plan() -> None:
    assert _check(Plan.FREE, "developer_tools", is_developer=True).allowed
    # ... and nothing else beyond the plan.
    assert not _check(Plan.FREE, "analytics", is_developer=True).allowed


def test_developer_plan_gets_every_group() -> None:
    caller = make_caller(Plan.DEVELOPER)
    assert allowed_groups(caller) == frozenset(PermissionGroup)
    for group in PermissionGroup:
        assert check_tool_permission(caller, _tool(group.value)).allowed, group


@pytest.mark.parametrize("plan", list(Plan))
def test_tool_without_group_is_refused_even_for_developers(plan: Plan) -> None:
    decision = _check(plan, None, roles=(ADMIN_ROLE,), is_developer=True)
    assert not decision.allowed
    assert "no permission group" in decision.reason


@pytest.mark.parametrize("group", ["", "Basic", "admin", "superuser", "*", "basic "])
def test_unknown_group_is_refused_even_for_developer_plan(group: str) -> None:
    decision = _check(Plan.DEVELOPER, group, roles=(ADMIN_ROLE,), is_developer=True)
    assert not decision.allowed
    assert "unknown permission group" in decision.reason


# -- ToolCaller from a verified identity ----------------------------------------------------


def _auth(user_id: str, **fields: object) -> AuthResult:
    values: dict[str, object] = {
        "success": True,
        "user_id": user_id,
        "plan": Plan.PRO,
        "token_type": TokenType.ACCESS,
        "expires_at": datetime.now(UTC),
    }
    values.update(fields)
    return AuthResult.model_validate(values)


def test_caller_takes_plan_roles_and_permissions_from_the_verified_token() -> None:
    ctx = UserExecutionContext.from_request(new_user_id())
    caller = ToolCaller.from_auth_result(
        ctx, _auth(ctx.user_id, roles=("admin",), permissions=("x",))
    )
    assert (caller.plan, caller.roles, caller.permissions) == (Plan.PRO, ("admin",), ("x",))
    assert not caller.is_developer


def test_developer_role_or_plan_makes_a_developer() -> None:
    ctx = UserExecutionContext.from_request(new_user_id())
    assert ToolCaller.from_auth_result(ctx, _auth(ctx.user_id, roles=("developer",))).is_developer
    assert ToolCaller.from_auth_result(ctx, _auth(ctx.user_id, plan=Plan.DEVELOPER)).is_developer


def test_caller_refuses_a_token_of_another_user() -> None:
    ctx = UserExecutionContext.from_request(new_user_id())
    with pytest.raises(CallerMismatchError):
        ToolCaller.from_auth_result(ctx, _auth(new_user_id()))


@pytest.mark.parametrize(
    "fields",
    [
        {"success": False},
        {"token_type": TokenType.REFRESH},
        {"token_type": TokenType.SERVICE},
        {"plan": None},
    ],
    ids=["failed", "refresh-token", "service-token", "no-plan"],
)
def test_caller_refuses_an_unverified_or_unsuitable_identity(fields: dict[str, object]) -> None:
    ctx = UserExecutionContext.from_request(new_user_id())
    with pytest.raises(InvalidCallerError):
        ToolCaller.from_auth_result(ctx, _auth(ctx.user_id, **fields))
