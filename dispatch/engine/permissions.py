"""Who may call which tool: plans and roles grant permission groups; every tool has one.

The rules, in one place:

* ``basic``: every plan.
* ``analytics`` and ``data_management``: from the ``pro`` plan up.
* ``advanced_optimization``: from the ``enterprise`` plan up.
* ``system_management``: the ``enterprise`` plan *and* the ``admin`` role.
* ``developer_tools``: developers (the ``developer`` plan, or ``ToolCaller.is_developer``).
* The ``developer`` plan is granted every group.
* A tool without a group, or with a group that is not one of the above, is refused for
  everyone, developers included: fail closed, never open.

A denial carries a reason meant for the caller and the upgrade path: the plans that would
allow the call, and the role it additionally needs.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from auth.api import Plan
from dispatch.engine.api import PermissionGroup, ToolCaller, ToolDefinition

__all__ = [
    "ADMIN_ROLE",
    "GROUP_REQUIRED_ROLES",
    "PLAN_GROUPS",
    "PermissionDecision",
    "allowed_groups",
    "check_tool_permission",
    "parse_group",
]

ADMIN_ROLE = "admin"

_ALL_GROUPS = frozenset(PermissionGroup)

#: The groups each plan grants (before role requirements).
PLAN_GROUPS: Mapping[Plan, frozenset[PermissionGroup]] = {
    Plan.FREE: frozenset({PermissionGroup.BASIC}),
    Plan.PRO: frozenset(
        {PermissionGroup.BASIC, PermissionGroup.ANALYTICS, PermissionGroup.DATA_MANAGEMENT}
    ),
    Plan.ENTERPRISE: frozenset(
        {
            PermissionGroup.BASIC,
            PermissionGroup.ANALYTICS,
            PermissionGroup.DATA_MANAGEMENT,
            PermissionGroup.ADVANCED_OPTIMIZATION,
            PermissionGroup.SYSTEM_MANAGEMENT,
        }
    ),
    Plan.DEVELOPER: _ALL_GROUPS,
}

#: Roles a group needs on top of the plan (not checked for the developer plan).
GROUP_REQUIRED_ROLES: Mapping[PermissionGroup, str] = {
    PermissionGroup.SYSTEM_MANAGEMENT: ADMIN_ROLE,
}

# Plans a customer can move to, cheapest first; the developer plan is not sold.
_UPGRADE_ORDER: tuple[Plan, ...] = (Plan.FREE, Plan.PRO, Plan.ENTERPRISE)


class PermissionDecision(BaseModel):
    """Whether a caller may call a tool, and if not, why and what would change that."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed: bool
    group: PermissionGroup | None = None
    reason: str
    #: Plans that would grant the group, cheapest first (empty if no plan change helps).
    upgrade_plans: tuple[Plan, ...] = ()
    #: A role the caller would additionally need.
    required_role: str | None = None


def parse_group(value: str | None) -> PermissionGroup | None:
    """The permission group named ``value``; ``None`` if it is missing or unknown."""
    if value is None:
        return None
    try:
        return PermissionGroup(value)
    except ValueError:
        return None


def allowed_groups(caller: ToolCaller) -> frozenset[PermissionGroup]:
    """Every group ``caller`` may use, roles included."""
    if caller.plan is Plan.DEVELOPER:
        return _ALL_GROUPS
    groups = {
        group
        for group in PLAN_GROUPS[caller.plan]
        if GROUP_REQUIRED_ROLES.get(group) is None or GROUP_REQUIRED_ROLES[group] in caller.roles
    }
    if caller.is_developer:
        groups.add(PermissionGroup.DEVELOPER_TOOLS)
    return frozenset(groups)


def _upgrade_plans(current: Plan, group: PermissionGroup) -> tuple[Plan, ...]:
    if current not in _UPGRADE_ORDER:
        return ()
    later = _UPGRADE_ORDER[_UPGRADE_ORDER.index(current) + 1 :]
    return tuple(plan for plan in later if group in PLAN_GROUPS[plan])


def check_tool_permission(caller: ToolCaller, definition: ToolDefinition) -> PermissionDecision:
    """Decide whether ``caller`` may call the tool ``definition`` describes."""
    name = definition.name
    if definition.group is None:
        return PermissionDecision(
            allowed=False,
            reason=f"tool {name!r} belongs to no permission group; such tools are refused",
        )
    group = parse_group(definition.group)
    if group is None:
        return PermissionDecision(
            allowed=False,
            reason=(
                f"tool {name!r} belongs to an unknown permission group; such tools are refused"
            ),
        )
    if group in allowed_groups(caller):
        return PermissionDecision(allowed=True, group=group, reason="allowed")

    if group is PermissionGroup.DEVELOPER_TOOLS:
        return PermissionDecision(
            allowed=False,
            group=group,
            reason=f"tool {name!r} (group {group.value}) is available to developers only",
            upgrade_plans=(Plan.DEVELOPER,),
        )
    role = GROUP_REQUIRED_ROLES.get(group)
    missing_role = role if role is not None and role not in caller.roles else None
    if group in PLAN_GROUPS[caller.plan]:
        # The plan is enough; only the role is missing.
        return PermissionDecision(
            allowed=False,
            group=group,
            reason=f"tool {name!r} (group {group.value}) needs the {missing_role!r} role",
            required_role=missing_role,
        )
    upgrades = _upgrade_plans(caller.plan, group)
    path = " or ".join(plan.value for plan in upgrades)
    reason = (
        f"tool {name!r} (group {group.value}) is not available on the "
        f"{caller.plan.value} plan; upgrade to {path}"
    )
    if missing_role is not None:
        reason += f" and obtain the {missing_role!r} role"
    return PermissionDecision(
        allowed=False,
        group=group,
        reason=reason,
        upgrade_plans=upgrades,
        required_role=missing_role,
    )
